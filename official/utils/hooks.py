"""Training hooks chosen by name with --hooks (the names tensorflow/models users know).

- LoggingTensorHook: every N steps, one line on stderr with the step, loss, cross-entropy, learning
  rate, examples/sec and the ETA to the last step.
- ExamplesPerSecondHook: examples/sec as a TensorBoard summary (chief only) and in the log.
- ProfilerHook: a Chrome trace of one step every N steps in model_dir.
"""

import datetime

from absl import logging
import tensorflow as tf

from official.utils.errors import PipelineError
from official.utils.flags_core import HOOK_NAMES

# A model_fn names these tensors of its training graph so that LoggingTensorHook can log them.
TOTAL_LOSS_TENSOR = "total_loss"
CROSS_ENTROPY_TENSOR = "cross_entropy"
LEARNING_RATE_TENSOR = "learning_rate"
_LOGGED_TENSORS = {
    "loss": TOTAL_LOSS_TENSOR,
    "cross_entropy": CROSS_ENTROPY_TENSOR,
    "learning_rate": LEARNING_RATE_TENSOR,
}


class _StepRate:
    """Examples/sec between the triggers of a SecondOrStepTimer, from global-step differences."""

    def __init__(self, every_n_steps, global_batch_size):
        self._timer = tf.compat.v1.train.SecondOrStepTimer(every_steps=every_n_steps)
        self._global_batch_size = global_batch_size

    def should_trigger(self, step):
        return self._timer.should_trigger_for_step(step)

    def update(self, step):
        """Returns (examples/sec, steps/sec) since the last trigger, or None at the first one."""
        elapsed_secs, elapsed_steps = self._timer.update_last_triggered_step(step)
        if not elapsed_secs or not elapsed_steps:
            return None
        steps_per_sec = elapsed_steps / elapsed_secs
        return steps_per_sec * self._global_batch_size, steps_per_sec


class ProgressLoggingHook(tf.estimator.SessionRunHook):
    """Logs step, loss, cross-entropy, learning rate, examples/sec and ETA every `every_n_steps`."""

    def __init__(self, every_n_steps, global_batch_size, max_steps):
        self._rate = _StepRate(every_n_steps, global_batch_size)
        self._max_steps = max_steps

    def begin(self):
        graph = tf.compat.v1.get_default_graph()
        self._fetches = {key: graph.get_tensor_by_name(name + ":0")
                         for key, name in _LOGGED_TENSORS.items()}
        self._fetches["step"] = tf.compat.v1.train.get_global_step()

    def before_run(self, run_context):
        return tf.estimator.SessionRunArgs(self._fetches)

    def after_run(self, run_context, run_values):
        values = run_values.results
        # The fetched step is the one before this run's increment.
        step = values["step"] + 1
        if not self._rate.should_trigger(step):
            return
        rate = self._rate.update(step)
        line = "step %d/%d: loss %.4f, cross-entropy %.4f, learning rate %.5g" % (
            step, self._max_steps, values["loss"], values["cross_entropy"], values["learning_rate"])
        if rate is not None:
            examples_per_sec, steps_per_sec = rate
            eta = datetime.timedelta(seconds=round(max(self._max_steps - step, 0) / steps_per_sec))
            line += ", %.1f examples/sec, ETA %s" % (examples_per_sec, eta)
        logging.info(line)


class ExamplesPerSecondHook(tf.estimator.SessionRunHook):
    """Logs examples/sec every N steps and writes it as a summary when given an output_dir."""

    def __init__(self, every_n_steps, global_batch_size, output_dir=None):
        self._rate = _StepRate(every_n_steps, global_batch_size)
        self._output_dir = output_dir

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()
        self._writer = (tf.compat.v1.summary.FileWriterCache.get(self._output_dir)
                        if self._output_dir else None)

    def before_run(self, run_context):
        return tf.estimator.SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        step = run_values.results + 1
        if not self._rate.should_trigger(step):
            return
        rate = self._rate.update(step)
        if rate is None:
            return
        examples_per_sec, _ = rate
        logging.info("examples/sec: %.1f", examples_per_sec)
        if self._writer is not None:
            summary = tf.compat.v1.Summary(value=[
                tf.compat.v1.Summary.Value(tag="examples_per_sec", simple_value=examples_per_sec)])
            self._writer.add_summary(summary, step)


def get_train_hooks(names, *, global_batch_size, max_steps, model_dir, every_n_steps=100,
                    is_chief=True):
    """The hooks named in `names` (case-insensitive; see HOOK_NAMES).

    Summaries and traces are written only by the chief; every worker logs.
    """
    known = {name.lower(): name for name in HOOK_NAMES}
    hooks = []
    for name in names:
        key = name.strip().lower()
        if key not in known:
            raise PipelineError(f"--hooks: unknown hook {name!r}; choose from {', '.join(HOOK_NAMES)}")
        if key == "loggingtensorhook":
            hooks.append(ProgressLoggingHook(every_n_steps, global_batch_size, max_steps))
        elif key == "examplespersecondhook":
            hooks.append(ExamplesPerSecondHook(every_n_steps, global_batch_size,
                                               model_dir if is_chief else None))
        elif is_chief:
            hooks.append(tf.estimator.ProfilerHook(save_steps=every_n_steps, output_dir=model_dir))
    return hooks
