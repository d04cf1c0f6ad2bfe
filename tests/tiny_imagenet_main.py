"""imagenet_main with tests.tiny_network in place of Xception, for tests that run it as a process:
    python -m tests.tiny_imagenet_main <imagenet_main flags>"""

import functools

from absl import app
from absl import logging

from official.xception import flags_core
from official.xception import imagenet_main
from tests import tiny_network

if __name__ == "__main__":
    flags_core.define_all()
    logging.set_verbosity(logging.INFO)
    app.run(functools.partial(imagenet_main.main, model_builder=tiny_network.tiny_network))
