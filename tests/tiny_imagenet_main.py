"""imagenet_main with tests.tiny_network in place of Xception, for tests that run it as a process:
    python -m tests.tiny_imagenet_main <imagenet_main flags> [--print_train_labels]

--print_train_labels prints each training batch's labels to stderr as the model_fn receives them
("train labels: [...]"), so that a test sees which records each worker trained on."""

import sys

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from official.xception import imagenet_main
from official.xception import model_fn as model_fn_lib
from official.xception import xception_flags
from tests import tiny_network

TRAIN_LABELS_PREFIX = "train labels:"


def _printing_train_labels(model_fn):
    def wrapped(features, labels, mode, params, config=None):
        if mode == tf.estimator.ModeKeys.TRAIN:
            printed = tf.print(TRAIN_LABELS_PREFIX, labels, summarize=-1, output_stream=sys.stderr)
            with tf.control_dependencies([printed]):
                labels = tf.identity(labels)
        return model_fn(features, labels, mode, params, config)
    return wrapped


def main(argv):
    if flags.FLAGS.print_train_labels:
        model_fn_lib.model_fn = _printing_train_labels(model_fn_lib.model_fn)
    imagenet_main.main(argv, model_builder=tiny_network.tiny_network)


if __name__ == "__main__":
    xception_flags.define_all()
    flags.DEFINE_boolean("print_train_labels", False, "Print each training batch's labels.")
    logging.set_verbosity(logging.INFO)
    app.run(main)
