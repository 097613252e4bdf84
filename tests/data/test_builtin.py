"""The built-in movie task: seeded worlds, the hidden labeler's rubric, the written files, and rankings."""
import functools
import json
import re

import numpy as np
import pytest

from mindrlhf.data.builtin import Labeler, ideal_response, load_world, make_world, write_builtin_task
from mindrlhf.data.builtin.functions import rank
from mindrlhf.data.builtin.task import prompt_text
from mindrlhf.data.formats import load_demonstrations, load_prompts, load_rankings
from mindrlhf.io import write_jsonl
from mindrlhf.data.tokenizer import train_tokenizer
from mindrlhf.tasks import make_rankings

SEEDS = (0, 1, 2)
SPEC = "mindrlhf.data.builtin.functions:rank"


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("task")
    paths = write_builtin_task(str(out / "seed0"), seed=0, n_train=600, n_prompts=300, n_heldout=100)
    return paths, load_world(paths["world.json"])


def test_world_shape_and_names():
    for seed in SEEDS:
        world = make_world(seed)
        assert 6 <= len(world.genres) <= 8 and len(world.movies) == 48
        assert all(len(world.of_genre(g)) >= 4 for g in world.genres)
        titles = [m.title.lower() for m in world.movies]
        assert len(set(titles)) == 48 and all(len(t.split()) >= 2 for t in titles)
        for a in titles:  # no title hides inside another, so exact matching finds the right one
            assert not any(a != b and re.search(r"\b" + re.escape(a) + r"\b", b) for b in titles)
        assert len({m.description for m in world.movies}) == 48
        assert all(1960 <= m.year <= 2023 for m in world.movies)
        assert world == make_world(seed)  # deterministic
    assert {m.title for m in make_world(0).movies}.isdisjoint({m.title for m in make_world(1).movies})


def test_files_deterministic_per_seed(tmp_path):
    a = write_builtin_task(str(tmp_path / "a"), seed=5, n_train=50, n_prompts=20, n_heldout=10)
    b = write_builtin_task(str(tmp_path / "b"), seed=5, n_train=50, n_prompts=20, n_heldout=10)
    c = write_builtin_task(str(tmp_path / "c"), seed=6, n_train=50, n_prompts=20, n_heldout=10)
    for name in a:
        assert open(a[name], "rb").read() == open(b[name], "rb").read(), name
        assert open(a[name], "rb").read() != open(c[name], "rb").read(), name


@pytest.mark.parametrize("seed", SEEDS)
def test_labeler_orders_perfect_wrong_nonsense(seed):
    world = make_world(seed)
    labeler = Labeler(world)
    genre = world.genres[0]
    good, other = world.of_genre(genre)[0], world.of_genre(world.genres[1])[0]
    prompt = prompt_text((0, genre, None, -1))
    detail = 'Try "{t.title}" ({t.year}), directed by {t.director}. It is about {t.description}.'
    perfect = labeler.score(prompt, detail.format(t=good))
    wrong_genre = labeler.score(prompt, detail.format(t=other))
    nonsense = labeler.score(prompt, "the of a bridge nights by about")
    assert perfect == labeler.max_score(prompt) == 3.5  # +2 genre, +0.5 year, director and description each
    assert wrong_genre == -1.0 + 1.5
    assert nonsense == -2.0
    assert perfect > wrong_genre > nonsense


def test_labeler_seen_title_and_false_details():
    world = make_world(0)
    labeler = Labeler(world)
    genre = world.genres[2]
    seen, fresh = world.of_genre(genre)[:2]
    other = world.of_genre(world.genres[3])[0]
    prompt = prompt_text((1, genre, seen.title, 0))
    assert labeler.parse_prompt(prompt) == (genre, seen)
    assert labeler.max_score(prompt) == 4.0
    terse = f'Try "{fresh.title}".'
    assert labeler.score(prompt, terse) == 2.0
    assert labeler.score(prompt, f'Try "{seen.title}".') == 0.0  # right genre, but already seen
    assert labeler.score(prompt, f'Since you saw "{seen.title}", try "{fresh.title}".') == 2.5
    assert labeler.explain(prompt, f'Try "{fresh.title}" ({fresh.year + 1}).') == {"right_genre": 2.0,
                                                                                    "false_year": -1.0}
    assert labeler.explain(prompt, f'Try "{fresh.title}" by {other.director}.')["false_director"] == -1.0
    assert labeler.explain(prompt, f'Try "{fresh.title}", about {other.description}.')["false_description"] == -1.0
    assert labeler.explain(prompt, f'Try "{fresh.title}", a {other.genre}.')["false_genre"] == -0.5
    assert labeler.explain(prompt, 'Try "The Moon Garden".') == {"invented_title": -1.0, "no_recommendation": -2.0}
    long = terse + " It is good." * 10  # 32 more words
    assert labeler.explain(prompt, long)["too_long"] == pytest.approx(-0.1 * (len(long.split()) - 30))


def test_task_files(task):
    paths, world = task
    labeler = Labeler(world)
    demos = load_demonstrations(paths["demonstrations.jsonl"])
    prompts = load_prompts(paths["prompts.jsonl"])
    heldout = load_prompts(paths["heldout_prompts.jsonl"])
    assert (len(demos), len(prompts), len(heldout)) == (600, 300, 100)
    train_texts = {d.prompt for d in demos} | {p.prompt for p in prompts}
    assert train_texts.isdisjoint({p.prompt for p in heldout})
    # heldout prompts follow the training distribution: about 40% name a seen title (P_SEEN), 80% of
    # those of the requested genre; drawing distinct keys had made nearly all of them name one
    for part in (prompts, heldout):
        seen = [p for p in part if p.meta["seen"]]
        assert 0.25 < len(seen) / len(part) < 0.55
        same = sum(world.by_title(p.meta["seen"]).genre == p.meta["genre"] for p in seen)
        assert same / len(seen) > 0.6
    for p in prompts + heldout:  # the labeler reads back what the generator meant
        genre, seen = labeler.parse_prompt(p.prompt)
        assert genre == p.meta["genre"] and (seen.title if seen else None) == p.meta["seen"]
    assert max(len(d.prompt.split()) for d in demos) <= 25
    assert max(len(d.response.split()) for d in demos) <= 30


def test_demonstrations_leave_room_for_rl(task):
    paths, world = task
    labeler = Labeler(world)
    rng = np.random.default_rng(0)
    demos = load_demonstrations(paths["demonstrations.jsonl"])
    scores = np.array([labeler.score(d.prompt, d.response) for d in demos])
    best = np.array([labeler.max_score(d.prompt) for d in demos])
    words = " ".join(d.response for d in demos).split()
    random_text = [" ".join(rng.choice(words, 15)) for _ in demos]
    random_scores = np.array([labeler.score(d.prompt, r) for d, r in zip(demos, random_text)])
    assert scores.mean() < best.mean() - 0.75  # room for RLHF above SFT
    assert scores.mean() > random_scores.mean() + 2.0  # but demonstrations are decent
    kinds = [labeler.explain(d.prompt, d.response) for d in demos]
    imperfect = np.mean([("wrong_genre" in k) or len(k) <= 1 for k in kinds])  # wrong genre or no detail
    assert 0.2 < imperfect < 0.4
    ideal = [labeler.score(d.prompt, ideal_response(labeler, d.prompt, rng)) for d in demos[:50]]
    assert ideal == [labeler.max_score(d.prompt) for d in demos[:50]]


def test_corpus_covers_the_world(task, tmp_path):
    paths, world = task
    corpus = open(paths["corpus.txt"], encoding="utf-8").read()
    for m in world.movies:
        for word in (m.title + " " + m.director + " " + m.description).split():
            assert word in corpus
    tok = train_tokenizer(paths["corpus.txt"], 1000, str(tmp_path / "tok"))
    assert 500 <= tok.vocab_size <= 1000
    lengths = [len(tok.encode(m.title)) for m in world.movies]
    assert max(lengths) <= 6  # names are whole pieces or a few, not spelled out byte by byte


def test_make_rankings(task, tmp_path):
    paths, world = task
    labeler = functools.partial(rank, world=paths["world.json"])
    rng = np.random.default_rng(1)
    genre = world.genres[0]
    prompt = prompt_text((2, genre, None, -1))
    good, other = world.of_genre(genre)[0], world.of_genre(world.genres[1])[0]
    responses = ["blah blah", f'Try "{other.title}".', f'Try "{good.title}" ({good.year}).', f'Try "{good.title}".']
    records = make_rankings([prompt, prompt, "Any good ones?"], [responses, ["", "x"], ["a", "b"]], labeler, SPEC, rng,
                            0.0)
    assert len(records) == 2  # the second prompt had one non-blank response: no preference to record
    assert records[0]["ranking"] == [2, 3, 1, 0]  # noise 0: by score, 2.5 > 2.0 > -1.0 > -2.0
    assert records[1]["ranking"] == [0, 1]  # equal scores keep the given order
    noisy = [make_rankings([prompt], [responses], labeler, SPEC, rng, 3.0)[0]["ranking"] for _ in range(20)]
    assert all(sorted(r) == [0, 1, 2, 3] for r in noisy)
    assert any(r != [2, 3, 1, 0] for r in noisy)  # labelers disagree
    write_jsonl(tmp_path / "rm.jsonl", records)
    assert load_rankings(str(tmp_path / "rm.jsonl"))[0].responses[0] == responses[2]
