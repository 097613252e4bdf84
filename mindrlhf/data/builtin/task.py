"""The built-in task: movie recommendations in a seeded invented world, written as the pipeline's files.

``write_builtin_task(out_dir, seed)`` writes, deterministically for a seed:

- ``demonstrations.jsonl``: decent but imperfect answers (about 55% fully detailed, 15% terse, 15% of the
  wrong genre, the rest recommending the already-seen title or getting one detail wrong), so SFT learns
  the format and RLHF has room to improve on it;
- ``prompts.jsonl``: prompts for RL rollouts (``genre`` and ``seen`` kept as metadata for evaluation);
- ``heldout_prompts.jsonl``: prompts disjoint from the other two files;
- ``corpus.txt``: text for training the tokenizer, covering every word of the world;
- ``world.json``: the catalogue, for :class:`~mindrlhf.data.builtin.labeler.Labeler`.

Prompts are short ("Any good comedies? I've already seen \"Velmor's Garden\".") and so are answers
(about 10-25 words), so a tiny LM can learn the format in minutes on a CPU.

With ``shelf=n`` every prompt also lists n films of the catalogue with their facts (see :func:`shelf_for`),
and every demonstration recommends one of them. A model trained from scratch learns the catalogue from
thousands of demonstrations; a pretrained model fine-tuned for a few minutes does not, but it can learn
to read a list in its prompt. The shelf turns the task from recall into choosing well and quoting exactly.
Shelf entries name the genre first (``mystery: "Title" (year, by director: plot)``) and shelf answers
start with the genre they pick (``Your mystery: "Title" ...``): a model that names the requested genre
then finds the right film by matching the words just before a title, a copy that even a 135M-parameter
model does (README, "Models and weights"). Without the shelf, answers keep their plain forms.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mindrlhf.data.builtin.templates import (ACKS, FULL_ANSWERS, PARTIAL_ANSWER, PROMPT_TEMPLATES, SEEN_TEMPLATES,
                                             SHELF_ENTRY, SHELF_FULL_ANSWERS, SHELF_INTRO, SHELF_PARTIAL_ANSWER,
                                             SHELF_TERSE_ANSWERS, TERSE_ANSWERS)
from mindrlhf.data.builtin.world import GENRES, make_world
from mindrlhf.io import write_jsonl

P_SEEN = 0.4  # share of prompts that name a seen title
P_SEEN_SAME_GENRE = 0.8  # a seen title is usually of the requested genre, where recommending it is tempting
HELDOUT_FRACTION = 0.15  # share of the prompt space reserved for heldout prompts
# demonstration kinds and their shares: the imperfect ones leave room for RLHF
DEMO_KINDS = (("full", 0.55), ("terse", 0.15), ("wrong_genre", 0.15), ("seen_or_partial", 0.07),
              ("false_detail", 0.08))


def _prompt_space(world) -> Tuple[List[tuple], np.ndarray]:
    """Every prompt the templates can make, as keys ``(template, genre, seen title or None, seen template)``,
    and the probability of each under the sampling process."""
    keys, probs = [], []
    p_template, p_genre = 1 / len(PROMPT_TEMPLATES), 1 / len(world.genres)
    for t in range(len(PROMPT_TEMPLATES)):
        for g in world.genres:
            keys.append((t, g, None, -1))
            probs.append(p_template * p_genre * (1 - P_SEEN))
            same = [m.title for m in world.of_genre(g)]
            other = [m.title for m in world.movies if m.genre != g]
            for titles, share in ((same, P_SEEN_SAME_GENRE), (other, 1 - P_SEEN_SAME_GENRE)):
                for title in titles:
                    for s in range(len(SEEN_TEMPLATES)):
                        keys.append((t, g, title, s))
                        probs.append(p_template * p_genre * P_SEEN * share / len(titles) / len(SEEN_TEMPLATES))
    probs = np.array(probs)
    return keys, probs / probs.sum()


def prompt_text(key: tuple, shelf: Sequence = ()) -> str:
    """The prompt for a key, followed by the films on the shelf (if any), each with its facts."""
    t, genre, seen, s = key
    a_genre, genres, _ = GENRES[genre]
    text = PROMPT_TEMPLATES[t].format(a_genre=a_genre, genres=genres)
    text += SEEN_TEMPLATES[s].format(seen=seen) if seen is not None else ""
    if shelf:
        text += SHELF_INTRO + "; ".join(SHELF_ENTRY.format(**vars(m)) for m in shelf) + "."
    return text


def shelf_for(world, key: tuple, rng: np.random.Generator, size: int) -> list:
    """``size`` (>= 3) films for a prompt key, in random order: one unseen film of the requested genre, the
    seen title if the prompt names one (a tempting wrong answer), and films of other genres to fill."""
    if size < 3:
        raise ValueError(f"shelf={size}: a shelf holds at least 3 films (the right one, the seen one, a wrong one)")
    _, genre, seen, _ = key
    films = [_pick(world, rng, genre, avoid=seen)] + ([world.by_title(seen)] if seen else [])
    others = [m for m in world.movies if m.genre != genre and m not in films]
    films += [others[i] for i in rng.choice(len(others), size - len(films), replace=False)]
    return [films[i] for i in rng.permutation(len(films))]


def _fill(template: str, movie, seen: Optional[str] = None) -> str:
    return template.format(title=movie.title, year=movie.year, director=movie.director, genre=movie.genre,
                           description=movie.description, a_genre=GENRES[movie.genre][0], seen=seen)


def _answers(shelf: Sequence) -> Tuple[Tuple[str, ...], Tuple[str, ...], str]:
    """The answer templates (full, terse, partial) for a prompt with or without a shelf."""
    if shelf:
        return SHELF_FULL_ANSWERS, SHELF_TERSE_ANSWERS, SHELF_PARTIAL_ANSWER
    return FULL_ANSWERS, TERSE_ANSWERS, PARTIAL_ANSWER


def _with_ack(ack: str, answer: str, seen: str) -> str:
    answer = answer if answer.startswith(("I ", "\"")) or ack.endswith("! ") else answer[0].lower() + answer[1:]
    return ack.format(seen=seen) + answer


def ideal_response(labeler, prompt: str, rng: np.random.Generator) -> str:
    """A best-scoring answer to ``prompt`` (``labeler.max_score(prompt)``): an unseen title of the requested
    genre with its year, director and description, acknowledging the seen title if there is one."""
    genre, seen = labeler.parse_prompt(prompt)
    shelf = labeler.shelf_in(prompt)
    world = _choosing_from(labeler.world, shelf)
    movie = _pick(world, rng, genre or world.genres[0], avoid=seen.title if seen else None)
    answer = _fill(_answers(shelf)[0][0], movie)
    return _with_ack(ACKS[rng.integers(len(ACKS))], answer, seen.title) if seen else answer


def _pick(world, rng, genre: str, avoid: Optional[str] = None, same: bool = True):
    pool = [m for m in world.movies if (m.genre == genre) == same and m.title != avoid]
    return pool[rng.integers(len(pool))]


def _choosing_from(world, shelf: Sequence):
    """The world whose films an answer may recommend: the shelf's, when the prompt has one."""
    return dataclasses.replace(world, movies=tuple(shelf)) if shelf else world


def demonstration(world, key: tuple, rng: np.random.Generator, shelf: Sequence = ()) -> str:
    """One demonstration answer for a prompt key, of a kind drawn with the DEMO_KINDS shares; with a
    shelf, the recommendation (right or wrong) is one of the shelf's films."""
    _, genre, seen, _ = key
    fulls, terses, partial = _answers(shelf)
    world = _choosing_from(world, shelf)
    kind = DEMO_KINDS[rng.choice(len(DEMO_KINDS), p=[p for _, p in DEMO_KINDS])][0]
    full = fulls[rng.integers(len(fulls))]
    if kind == "terse":
        return _fill(terses[rng.integers(len(terses))], _pick(world, rng, genre, avoid=seen))
    if kind == "wrong_genre":
        answer = _fill(full, _pick(world, rng, genre, same=False, avoid=seen))
    elif kind == "seen_or_partial":
        if seen:  # recommends the very title the user has seen
            return _fill(full, world.by_title(seen))
        return _fill(partial, _pick(world, rng, genre))
    elif kind == "false_detail":
        movie = _pick(world, rng, genre, avoid=seen)
        other = _pick(world, rng, genre, same=False)  # a detail borrowed from another title
        answer = _fill(fulls[0], movie).replace(movie.director, other.director)
        if other.director == movie.director:
            answer = answer.replace(f"({movie.year})", f"({movie.year + 3})")
    else:
        answer = _fill(full, _pick(world, rng, genre, avoid=seen))
    return _with_ack(ACKS[rng.integers(len(ACKS))], answer, seen) if seen else answer


def sample_prompts(world, rng: np.random.Generator, n: int, heldout: bool) -> List[tuple]:
    """``n`` prompt keys from the training part or the heldout part of the prompt space.

    The split is fixed by the world's seed (not by ``rng``), so heldout prompts never occur in training
    files. Both parts are drawn with replacement from the same sampling process, so heldout prompts
    follow the training distribution (drawing distinct keys instead would favour the rare ones: prompts
    naming a seen title of another genre, which are a small share of training prompts).
    """
    keys, probs = _prompt_space(world)
    split_rng = np.random.Generator(np.random.PCG64([world.seed, 7]))
    reserved = split_rng.random(len(keys)) < HELDOUT_FRACTION
    part = reserved if heldout else ~reserved
    idx, p = np.flatnonzero(part), probs[part] / probs[part].sum()
    chosen = rng.choice(len(idx), size=n, replace=True, p=p)
    return [keys[idx[i]] for i in chosen]


def corpus_lines(world, demonstrations: Sequence[dict]) -> List[str]:
    """Tokenizer training text: every catalogue fact in the answer templates, every prompt template
    for every genre, and the demonstrations."""
    lines = []
    for m in world.movies:
        lines += [_fill(t, m) for t in FULL_ANSWERS + TERSE_ANSWERS]
        lines += [a.format(seen=m.title) + _fill(FULL_ANSWERS[0], m) for a in ACKS]
    for g in world.genres:
        for t in range(len(PROMPT_TEMPLATES)):
            lines += [prompt_text((t, g, None, -1))] + [prompt_text((t, g, world.movies[0].title, s))
                                                         for s in range(len(SEEN_TEMPLATES))]
        lines.append(" ".join(GENRES[g][2]))
    lines += [d["prompt"] + "\n" + d["response"] for d in demonstrations]
    return lines


def write_builtin_task(out_dir: str, seed: int = 0, n_train: int = 2000, n_prompts: int = 1000,
                       n_heldout: int = 200, n_titles: int = 48, shelf: int = 0) -> Dict[str, str]:
    """Write the task files (see module docstring) into ``out_dir``; return ``{name: path}``."""
    world = make_world(seed, n_titles=n_titles)
    rng = np.random.Generator(np.random.PCG64([seed, 1]))
    shelf_rng = np.random.Generator(np.random.PCG64([seed, 2]))  # its own stream: shelf=0 files stay as they were

    def shelved(keys):
        return [(k, shelf_for(world, k, shelf_rng, shelf) if shelf else ()) for k in keys]

    demos = [{"prompt": prompt_text(k, films), "response": demonstration(world, k, rng, films)}
             for k, films in shelved(sample_prompts(world, rng, n_train, heldout=False))]
    prompts = [{"prompt": prompt_text(k, films), "genre": k[1], "seen": k[2]}
               for k, films in shelved(sample_prompts(world, rng, n_prompts, heldout=False))]
    heldout = [{"prompt": prompt_text(k, films), "genre": k[1], "seen": k[2]}
               for k, films in shelved(sample_prompts(world, rng, n_heldout, heldout=True))]
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in
             ("demonstrations.jsonl", "prompts.jsonl", "heldout_prompts.jsonl", "corpus.txt", "world.json")}
    write_jsonl(paths["demonstrations.jsonl"], demos)
    write_jsonl(paths["prompts.jsonl"], prompts)
    write_jsonl(paths["heldout_prompts.jsonl"], heldout)
    with open(paths["corpus.txt"], "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_lines(world, demos)) + "\n")
    world.save(paths["world.json"])
    return paths

