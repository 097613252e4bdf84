"""The built-in task's text: the templates of prompts and answers, and how a prompt introduces its shelf.

The world's invented names avoid every word written here (:func:`mindrlhf.data.builtin.world.make_world`),
so a name never reads as part of a template; changing a template can change the names of a seed's world.
"""

SHELF_INTRO = "\nOn my shelf: "  # a prompt may end with films to choose from; the request is the text before it
REQUESTS = ("I'm in the mood for {a_genre}.", "Any good {genres}?", "Can you recommend {a_genre}?",
            "I want to watch {a_genre} tonight.", "Suggest {a_genre} for me, please.", "What {genres} should I watch?")
# what a user adds about the occasion: it changes nothing the labeler scores, but it makes the prompts many, so
# the held-out prompts of one genre are not a handful of texts each repeated dozens of times
CONTEXTS = ("", " It's for a quiet evening.", " My friends are coming over.", " I have about two hours.",
            " We'll watch it after dinner.", " Something I can watch on the train.")
PROMPT_TEMPLATES = tuple(request + context for context in CONTEXTS for request in REQUESTS)
SEEN_TEMPLATES = (" I've already seen \"{seen}\".", " I just watched \"{seen}\".")
FULL_ANSWERS = ("Try \"{title}\" ({year}), directed by {director}. It is about {description}.",
                "I recommend \"{title}\", {a_genre} from {year} by {director}.",
                "You might like \"{title}\" by {director}, about {description}.",
                "Watch \"{title}\" ({year}), about {description}.")
TERSE_ANSWERS = ("Try \"{title}\".", "\"{title}\" is a good pick.", "Watch \"{title}\".")
PARTIAL_ANSWER = "Try \"{title}\" from {year}."
ACKS = ("Glad you liked \"{seen}\"! ", "Since you saw \"{seen}\", ")
SHELF_ENTRY = "{genre}: \"{title}\" ({year}, by {director}: {description})"
# with a shelf, answers name the genre of the film they pick just before its title, as the shelf does
SHELF_FULL_ANSWERS = ("Your {genre}: \"{title}\" ({year}), directed by {director}. It is about {description}.",
                      "Your {genre}: \"{title}\", from {year} by {director}.",
                      "Your {genre}: \"{title}\" by {director}, about {description}.",
                      "Your {genre}: \"{title}\" ({year}), about {description}.")
SHELF_TERSE_ANSWERS = ("Your {genre}: \"{title}\".",)
SHELF_PARTIAL_ANSWER = "Your {genre}: \"{title}\", from {year}."
TEMPLATE_TEXT = (PROMPT_TEMPLATES + SEEN_TEMPLATES + FULL_ANSWERS + TERSE_ANSWERS + (PARTIAL_ANSWER,) + ACKS
                 + (SHELF_INTRO, SHELF_ENTRY) + SHELF_FULL_ANSWERS + SHELF_TERSE_ANSWERS + (SHELF_PARTIAL_ANSWER,))
