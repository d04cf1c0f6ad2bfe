"""Logging for the command-line tools: each TensorFlow log line once, without deprecation notices.

Under absl's app.run, TensorFlow's logger keeps the stderr handler it gave itself on import next to
absl's handler on the root logger, so every line would print twice. And the tf.estimator and
tf.compat.v1 APIs this pipeline is built on (see docs/DESIGN.md §8) announce their deprecation
dozens of times a run, notices a user cannot act on that bury the lines that matter.
"""

import logging
import os

from absl import logging as absl_logging
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


# TensorFlow modules whose INFO lines, under a multi-worker strategy, replay its set-up: the
# RunConfig and session configs (once per copy of the strategy), the devices, the collective counts,
# the hooks and the session creation.
_CLUSTER_SETUP_MODULES = frozenset({
    "api", "collective_all_reduce_strategy", "cross_device_ops", "distribute_coordinator",
    "estimator_training", "mirrored_strategy", "monitored_session", "run_config", "session_manager",
})


class _RunStoryOnly(logging.Filter):
    """Passes warnings and errors, and the INFO lines that tell the run's story (progress,
    checkpoints, evaluations, exports), not the cluster set-up nor multi-line configuration dumps."""

    def filter(self, record):
        if record.levelno > logging.WARNING:
            return True
        if record.module in _CLUSTER_SETUP_MODULES:
            # Their warnings too: e.g. that evaluation runs without a strategy, as it must here.
            return False
        return record.levelno > logging.INFO or "\n" not in record.getMessage()


def log_cluster_task_to_file(path):
    """Writes every log line to `path` and leaves on the console (absl's stderr handler) only the
    run's story: a cluster task's console then reads like a single machine's.

    Returns the file's path, or None where it cannot be opened (the console then keeps everything).
    """
    try:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    console = absl_logging.get_absl_handler()
    file_handler.setFormatter(console.formatter or absl_logging.PythonFormatter())
    logging.getLogger().addHandler(file_handler)
    console.addFilter(_RunStoryOnly())
    return path
