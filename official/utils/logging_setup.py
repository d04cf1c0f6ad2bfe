"""Logging for the command-line tools: each TensorFlow log line once, without deprecation notices.

Under absl's app.run, TensorFlow's logger keeps the stderr handler it gave itself on import next to
absl's handler on the root logger, so every line would print twice. And the tf.estimator and
tf.compat.v1 APIs this pipeline is built on (see docs/DESIGN.md §8) announce their deprecation
dozens of times a run, notices a user cannot act on that bury the lines that matter.
"""

import logging

import tensorflow as tf


class _WithoutDeprecationNotices(logging.Filter):

    def filter(self, record):
        # TensorFlow logs every deprecation notice from its util/deprecation.py.
        return record.module != "deprecation"


_WITHOUT_DEPRECATION_NOTICES = _WithoutDeprecationNotices()


def log_through_absl_only():
    """Call from a main() run by absl's app.run, whose handler then prints TensorFlow's lines."""
    logger = tf.get_logger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    if _WITHOUT_DEPRECATION_NOTICES not in logger.filters:
        logger.addFilter(_WITHOUT_DEPRECATION_NOTICES)
