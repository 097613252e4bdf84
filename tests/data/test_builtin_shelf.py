"""The built-in task with a shelf: every prompt lists films with their facts, one of them the right answer."""
import numpy as np
import pytest

from mindrlhf.data.builtin import Labeler, ideal_response, load_world, make_world, write_builtin_task
from mindrlhf.data.builtin.templates import SHELF_INTRO
from mindrlhf.data.builtin.task import prompt_text, shelf_for
from mindrlhf.data.formats import load_demonstrations, load_prompts


@pytest.fixture(scope="module")
def shelved(tmp_path_factory):
    out = tmp_path_factory.mktemp("shelf")
    paths = write_builtin_task(str(out), seed=3, n_train=400, n_prompts=200, n_heldout=60, shelf=3)
    return paths, Labeler(load_world(paths["world.json"]))


def test_each_prompt_lists_a_right_film_and_the_seen_one(shelved):
    paths, labeler = shelved
    prompts = load_prompts(paths["prompts.jsonl"]) + load_prompts(paths["heldout_prompts.jsonl"])
    for p in prompts:
        request, shelf_text = p.prompt.split(SHELF_INTRO)
        shelf = labeler.shelf_in(p.prompt)
        assert len(shelf) == 3 and len(set(shelf)) == 3
        genre, seen = labeler.parse_prompt(p.prompt)  # the shelf's titles and genre words are not the request
        assert genre == p.meta["genre"] and (seen.title if seen else None) == p.meta["seen"]
        assert labeler.parse_prompt(request) == (genre, seen)
        assert any(m.genre == genre and m != seen for m in shelf)
        assert seen is None or seen in shelf
        assert any(m.genre != genre for m in shelf)  # a wrong answer is always within reach
        for m in shelf:  # every fact a full answer needs is in the prompt
            assert f'{m.genre}: "{m.title}" ({m.year}, by {m.director}: {m.description})' in shelf_text
    positions = [[m.genre == p.meta["genre"] and m.title != p.meta["seen"] for m in labeler.shelf_in(p.prompt)]
                 for p in prompts]
    first_right = np.array([row.index(True) for row in positions])
    assert all(np.bincount(first_right, minlength=3) > len(prompts) / 6)  # the right film is not always first


def test_demonstrations_choose_from_the_shelf(shelved):
    paths, labeler = shelved
    demos = load_demonstrations(paths["demonstrations.jsonl"])
    world_titles = {m.title for m in labeler.world.movies}
    right = []
    for d in demos:
        shelf = {m.title for m in labeler.shelf_in(d.prompt)}
        quoted = set(d.response.split('"')[1::2])
        assert quoted <= world_titles and quoted & shelf, d  # recommends (or acknowledges) films on the shelf
        assert quoted <= shelf, d
        right.append("right_genre" in labeler.explain(d.prompt, d.response))
        picked = [m for m in labeler.shelf_in(d.prompt) if f'"{m.title}"' in d.response.rpartition(": ")[2]]
        assert picked and d.response.count(f'{picked[0].genre}: "{picked[0].title}"') == 1, d  # as on the shelf
    assert 0.7 < np.mean(right) < 0.9  # mostly right, with room for RLHF


def test_ideal_response_picks_a_shelf_film(shelved):
    paths, labeler = shelved
    rng = np.random.default_rng(0)
    for p in load_prompts(paths["heldout_prompts.jsonl"])[:30]:
        answer = ideal_response(labeler, p.prompt, rng)
        assert labeler.score(p.prompt, answer) == labeler.max_score(p.prompt)
        assert answer.split('"')[-2 if p.meta["seen"] else 1] in {m.title for m in labeler.shelf_in(p.prompt)}


def test_shelf_below_three_is_refused():
    world = make_world(0)
    key = (0, world.genres[0], None, -1)
    with pytest.raises(ValueError, match="shelf=2"):
        shelf_for(world, key, np.random.default_rng(0), 2)
    assert SHELF_INTRO not in prompt_text(key)  # no shelf: the prompt is the request alone


def test_pipeline_config_names_a_bad_shelf(tmp_path):
    from mindrlhf.config import ConfigError, load_config
    from mindrlhf.pipeline_config import PipelineConfig

    cfg = tmp_path / "p.yaml"
    cfg.write_text("builtin:\n  shelf: 2\n")
    with pytest.raises(ConfigError, match="builtin.shelf"):
        load_config(PipelineConfig, str(cfg))
    assert load_config(PipelineConfig, str(cfg), ["builtin.shelf=3"]).builtin.shelf == 3
