"""The built-in task: movie recommendations in a small seeded world, with a hidden labeler."""
from mindrlhf.data.builtin.labeler import Labeler
from mindrlhf.data.builtin.task import ideal_response, write_builtin_task
from mindrlhf.data.builtin.world import Movie, World, load_world, make_world
