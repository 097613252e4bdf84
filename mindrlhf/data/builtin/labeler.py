"""The built-in task's hidden labeler: scores a recommendation against the world, and ranks K responses
with noise like a panel of human labelers would. Its scores are for evaluation only; training sees only
the rankings it produces.

Scoring rubric, ``score(prompt, response) = sum of``:

From the prompt the labeler reads the requested genre (genre words, e.g. "comedies", "scary") and the
title the user has already seen (any catalogue title in the prompt before the shelf, if the prompt lists
films on a shelf: see :data:`~mindrlhf.data.builtin.templates.SHELF_INTRO`). In the response, the
*recommendation* is the first catalogue title mentioned, skipping mentions of the seen title that are
acknowledgements (preceded closely by "seen", "saw", "watched", "liked", ...).

===============================  ========================================================
no catalogue title recommended   -2.0
recommended title's genre        +2.0 if it is the requested genre, else -1.0
recommends the seen title        -2.0
acknowledges the seen title      +0.5
year of the recommendation       +0.5 if a correct year is given; -1.0 per wrong year
director                         +0.5 if its director is named; -1.0 per other director named
what it is about                 +0.5 if its description is given; -1.0 per other title's description
genre words                      -0.5 per genre named that is not the recommendation's genre
more titles recommended          -0.5 per further catalogue title (one clear recommendation)
invented title                   -1.0 per quoted title that is not in the catalogue
length                           -0.1 per word beyond 30 words, at most -3.0
===============================  ========================================================

Details (year, director, description, genre words) are judged against the recommendation; with no
recommendation they earn nothing. The best achievable score is ``max_score(prompt)``: 3.5, or 4.0 when
the prompt names a seen title.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mindrlhf.data.builtin.templates import SHELF_INTRO
from mindrlhf.data.builtin.world import GENRES, Movie, World

MAX_WORDS = 30
ACK_WORDS = re.compile(r"\b(seen|saw|watched|liked|loved|enjoyed)\b", re.IGNORECASE)
ACK_WINDOW = 30  # characters before a seen-title mention searched for an acknowledgement word
YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")
QUOTED = re.compile(r"\"([^\"]{1,80})\"")


def _phrase(text: str) -> re.Pattern:
    return re.compile(r"(?<![\w'])" + re.escape(text) + r"(?![\w'])", re.IGNORECASE)


class Labeler:
    """``score``/``explain`` one response; ``rank`` K responses (best first) with labeler noise."""

    def __init__(self, world: World):
        self.world = world
        self._titles = [(_phrase(m.title), m) for m in world.movies]
        self._directors = [(_phrase(d), d) for d in world.directors]
        self._descriptions = [(_phrase(m.description), m) for m in world.movies]
        self._genre_words = [(_phrase(w), g) for g, (_, _, words) in GENRES.items() for w in words]

    # ------------------------------------------------------------ parsing
    def _mentions(self, text: str) -> List[Tuple[int, int, Movie]]:
        found = [(hit.start(), hit.end(), m) for pattern, m in self._titles for hit in pattern.finditer(text)]
        return sorted(found, key=lambda x: x[0])

    def _genres_in(self, text: str) -> List[str]:
        hits = sorted((hit.start(), g) for pattern, g in self._genre_words for hit in pattern.finditer(text))
        return [g for _, g in hits]

    def parse_prompt(self, prompt: str) -> Tuple[Optional[str], Optional[Movie]]:
        """``(requested genre or None, seen title or None)``."""
        prompt = prompt.partition(SHELF_INTRO)[0]
        mentions = self._mentions(prompt)
        seen = mentions[0][2] if mentions else None
        rest = _blank_out(prompt, [(s, e) for s, e, _ in mentions])
        genres = self._genres_in(rest)
        return (genres[0] if genres else None), seen

    def shelf_in(self, prompt: str) -> List[Movie]:
        """The films listed on the prompt's shelf, in order (empty if it has none)."""
        _, _, shelf = prompt.partition(SHELF_INTRO)
        return [m for _, _, m in self._mentions(shelf)]

    # ------------------------------------------------------------ scoring
    def explain(self, prompt: str, response: str) -> Dict[str, float]:
        """The rubric's terms for one response (only the non-zero ones); their sum is ``score``."""
        genre, seen = self.parse_prompt(prompt)
        terms: Dict[str, float] = {}

        def add(name: str, value: float) -> None:
            terms[name] = terms.get(name, 0.0) + value

        mentions = self._mentions(response)
        recommended, acknowledged = [], False
        for start, _, movie in mentions:
            if seen is not None and movie == seen and ACK_WORDS.search(response[max(0, start - ACK_WINDOW):start]):
                acknowledged = True
            else:
                recommended.append(movie)
        catalogue = {m.title.lower() for m in self.world.movies}
        for quoted in QUOTED.findall(response):
            if quoted.strip().lower() not in catalogue:
                add("invented_title", -1.0)
        words = len(response.split())
        if words > MAX_WORDS:
            add("too_long", -min(3.0, 0.1 * (words - MAX_WORDS)))
        if acknowledged:
            add("acknowledges_seen", 0.5)
        if not recommended:
            add("no_recommendation", -2.0)
            return terms
        r = recommended[0]
        for _ in {m.title for m in recommended[1:]} - {r.title}:
            add("extra_titles", -0.5)
        if genre is not None:
            add("right_genre" if r.genre == genre else "wrong_genre", 2.0 if r.genre == genre else -1.0)
        if seen is not None and r == seen:
            add("recommends_seen", -2.0)
        self._details(response, [(s, e) for s, e, _ in mentions], r, add)
        return terms

    def _details(self, response: str, title_spans, r: Movie, add) -> None:
        text = _blank_out(response, title_spans)  # titles hold names and nouns that are not details
        years = {int(y) for y in YEAR.findall(text)}
        if r.year in years:
            add("true_year", 0.5)
        for _ in years - {r.year}:
            add("false_year", -1.0)
        spans, directors, descriptions = [], set(), set()
        for pattern, director in self._directors:
            for hit in pattern.finditer(text):
                spans.append(hit.span())
                directors.add(director)
        for pattern, movie in self._descriptions:
            for hit in pattern.finditer(text):
                spans.append(hit.span())
                descriptions.add(movie.title)
        if r.director in directors:
            add("true_director", 0.5)
        for _ in directors - {r.director}:
            add("false_director", -1.0)
        if r.title in descriptions:
            add("true_description", 0.5)
        for _ in descriptions - {r.title}:
            add("false_description", -1.0)
        for _ in set(self._genres_in(_blank_out(text, spans))) - {r.genre}:
            add("false_genre", -0.5)

    def score(self, prompt: str, response: str) -> float:
        return float(sum(self.explain(prompt, response).values()))

    def max_score(self, prompt: str) -> float:
        """The best achievable score for ``prompt`` (a concise, fully detailed, right-genre answer)."""
        genre, seen = self.parse_prompt(prompt)
        return (2.0 if genre else 0.0) + 1.5 + (0.5 if seen else 0.0)

    def rank(self, prompt: str, responses: Sequence[str], rng: np.random.Generator, noise: float = 0.0) -> List[int]:
        """Indices of ``responses`` best first, by ``score + noise * N(0, 1)`` (labelers disagree);
        ties keep the given order. With ``noise=0`` it ranks by score exactly."""
        scores = np.array([self.score(prompt, r) for r in responses], dtype=np.float64)
        if noise > 0:
            scores = scores + noise * rng.standard_normal(len(scores))
        return [int(i) for i in np.argsort(-scores, kind="stable")]


def _blank_out(text: str, spans) -> str:
    """Replace character spans by spaces (keeps other offsets valid)."""
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)
