"""A small invented world of movies, generated from a seed: the built-in task's ground truth.

Each title has a genre, a year, a director and a one-line description. Titles and directors are built
from invented, pronounceable names (syllables) plus common English nouns, so every seed gives a
different world and nothing can be looked up elsewhere. Every generated name is unique and no name is a
substring of another word of the world, so the labeler can find titles in text by exact matching.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

from mindrlhf.data.builtin.templates import TEMPLATE_TEXT

# genre -> (singular phrase with article, plural phrase, words that name it in text)
GENRES: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "comedy": ("a comedy", "comedies", ("comedy", "comedies", "funny")),
    "thriller": ("a thriller", "thrillers", ("thriller", "thrillers")),
    "horror": ("a horror movie", "horror movies", ("horror", "scary")),
    "drama": ("a drama", "dramas", ("drama", "dramas")),
    "romance": ("a romance", "romances", ("romance", "romances", "romantic")),
    "sci-fi": ("a sci-fi movie", "sci-fi movies", ("sci-fi", "science fiction")),
    "western": ("a western", "westerns", ("western", "westerns")),
    "animation": ("an animated movie", "animated movies", ("animated", "animation", "cartoon")),
    "documentary": ("a documentary", "documentaries", ("documentary", "documentaries")),
    "mystery": ("a mystery", "mysteries", ("mystery", "mysteries", "whodunit")),
}

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "tr", "st", "gr", "kl")
VOWELS = ("a", "e", "i", "o", "u", "a", "o", "e")  # repeats make the common vowels commoner
CODAS = ("", "", "n", "r", "l", "s", "m")
NOUNS = ("Nights", "River", "Harbor", "Garden", "Winter", "Echo", "Crown", "Letters", "Station", "Summer",
         "Shadows", "Bridge", "Lantern", "Orchard", "Voyage", "Promise", "Island", "Storm", "Road", "Tower",
         "Mirror", "Horizon", "Valley", "Frontier", "Engine", "Sparrow", "Canyon", "Ember")
TITLE_PATTERNS = ("{name} {noun}", "The {noun} of {name}", "{name}'s {noun}", "Beyond {name}", "The {name} Affair")
PEOPLE = ("a retired pilot", "two rival chefs", "a shy librarian", "a young detective", "an old sailor",
          "a clumsy inventor", "three sisters", "a runaway prince", "a tired nurse", "a stubborn farmer",
          "a lonely robot", "a small-town mayor", "a famous painter", "a nervous groom", "a street musician",
          "a former spy")
ACTIONS = ("searching for a lost brother", "hiding a stolen map", "chasing a missing train",
           "guarding an old lighthouse", "planning a daring heist", "running a failing hotel",
           "escaping a frozen city", "training a wild horse", "solving a village crime", "building a flying ship",
           "crossing a burning desert", "winning back an old friend", "hunting a strange beast",
           "fixing a broken clock", "saving a grand theater", "coming home from a long war")


@dataclass(frozen=True)
class Movie:
    title: str
    genre: str
    year: int
    director: str
    description: str  # e.g. "a retired pilot searching for a lost brother"


@dataclass(frozen=True)
class World:
    seed: int
    genres: Tuple[str, ...]
    movies: Tuple[Movie, ...]

    def by_title(self, title: str) -> Movie:
        for m in self.movies:
            if m.title.lower() == title.lower():
                return m
        raise KeyError(f"{title!r} is not in this world's catalogue")

    def of_genre(self, genre: str) -> List[Movie]:
        return [m for m in self.movies if m.genre == genre]

    @property
    def directors(self) -> List[str]:
        return sorted({m.director for m in self.movies})

    def to_json(self) -> dict:
        return {"seed": self.seed, "genres": list(self.genres), "movies": [asdict(m) for m in self.movies]}

    @staticmethod
    def from_json(obj: dict) -> "World":
        return World(obj["seed"], tuple(obj["genres"]), tuple(Movie(**m) for m in obj["movies"]))

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1)


def load_world(path: str) -> World:
    with open(path, encoding="utf-8") as f:
        return World.from_json(json.load(f))


def _plain_words() -> set:
    """Every lower-case word the world and the task templates use, which invented names must avoid."""
    text = " ".join(NOUNS + TITLE_PATTERNS + PEOPLE + ACTIONS + TEMPLATE_TEXT)
    text += " " + " ".join(" ".join((s, p) + words) for s, p, words in GENRES.values())
    return set(re.findall(r"[a-z]+", text.lower()))


def _names(rng: np.random.Generator, count: int, avoid: set) -> List[str]:
    names: List[str] = []
    while len(names) < count:
        n_syllables = 3 if rng.random() < 0.25 else 2
        name = "".join(ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))]
                       for _ in range(n_syllables)) + CODAS[rng.integers(len(CODAS))]
        if name not in avoid:
            avoid.add(name)
            names.append(name.capitalize())
    return names


def make_world(seed: int = 0, n_titles: int = 48, n_directors: int = 16) -> World:
    """A world of ``n_titles`` movies over 6-8 genres (the count and the genres depend on the seed),
    at least 4 titles per genre, years 1960-2023, each director with several titles."""
    rng = np.random.Generator(np.random.PCG64(seed))
    all_genres = list(GENRES)
    n_genres = int(rng.integers(6, 9))
    if n_titles < 4 * n_genres:
        raise ValueError(f"n_titles={n_titles} is too few for {n_genres} genres; use at least {4 * n_genres}")
    genres = tuple(all_genres[i] for i in sorted(rng.choice(len(all_genres), n_genres, replace=False)))
    avoid = _plain_words()
    names = _names(rng, n_titles + 2 * n_directors, avoid)  # every title and director gets fresh names
    title_names, first, last = names[:n_titles], names[n_titles:n_titles + n_directors], names[n_titles + n_directors:]
    directors = [f"{a} {b}" for a, b in zip(first, last)]
    plots = [(p, a) for p in PEOPLE for a in ACTIONS]
    plot_order = rng.permutation(len(plots))[:n_titles]
    genre_of = [genres[i % n_genres] for i in rng.permutation(n_titles)]  # balanced, shuffled
    movies = []
    for i in range(n_titles):
        pattern = TITLE_PATTERNS[rng.integers(len(TITLE_PATTERNS))]
        title = pattern.format(name=title_names[i], noun=NOUNS[rng.integers(len(NOUNS))])
        person, action = plots[plot_order[i]]
        movies.append(Movie(title=title, genre=genre_of[i], year=int(rng.integers(1960, 2024)),
                            director=directors[i % n_directors], description=f"{person} {action}"))
    return World(seed=seed, genres=genres, movies=tuple(movies))
