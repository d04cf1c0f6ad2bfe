"""Checks that let imagenet_main fail in one line before any long work, and the model-directory lock.

- validate_run_flags: every number and output location of a run, checked before the graph is built
  (a bad --export_dir would otherwise surface only after a whole training cycle).
- lock_model_dir: one training process per model directory and task, so that a launcher restarted
  while the first run still trains cannot write checkpoints over it.
- check_resume_compatible: a model directory's checkpoint and class list must fit the data before
  anything is written into it.
- io_error_message: a full disk or a file-size limit named as such, with the directory it hit.
"""

import errno
import fcntl
import math
import os
import socket
import time

import tensorflow as tf

from official.xception import dataset_info
from official.xception import preprocessing
from official.xception import xception_model
from official.xception.errors import PipelineError

LOCK_PREFIX = ".lock-"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SPACE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file size limit was reached",
                 errno.EDQUOT: "the disk quota is exceeded"}
_SPACE_MESSAGES = {os.strerror(code): reason for code, reason in _SPACE_ERRORS.items()}

# The open lock files of this process, by path: held until the process ends (the kernel drops an
# flock when its holder dies, so a killed run leaves nothing stuck), and taken again for free by a
# later run() in the same process.
_HELD_LOCKS = {}


def is_local_path(path):
    return "://" not in path


def _check_int_at_least(value, flag, minimum):
    if value is not None and not minimum <= value < 2 ** 63:
        raise PipelineError(f"--{flag}={value}: must be an integer >= {minimum} (and below 2**63)")


def _check_positive_finite(value, flag):
    if not math.isfinite(value) or value <= 0:
        raise PipelineError(f"--{flag}={value}: must be a positive finite number")


def writable_directory(path, flag):
    """Creates local directory `path` if needed and proves it writable; raises PipelineError."""
    if not is_local_path(path):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise PipelineError(f"{flag}={path} is a file, not a directory: give a directory path")
    try:
        os.makedirs(path, exist_ok=True)
        # os.access says yes to root on a read-only mount: only a real write tells.
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise PipelineError(f"{flag}={path} is not writable ({error.strerror}): give a directory "
                            "you can write to") from None


def writable_file(path, flag):
    """Proves that local file `path` can be created (without touching an existing one)."""
    if os.path.isdir(path):
        raise PipelineError(f"{flag}={path} is a directory: give a file path")
    writable_directory(os.path.dirname(os.path.abspath(path)), f"{flag} (its directory)")


def check_checkpoint_path(path, flag):
    """A warm-start path must be a TensorFlow checkpoint; a Keras .h5 gets the converter named."""
    if not is_local_path(path) or not os.path.isfile(path):
        return
    with open(path, "rb") as handle:
        signature = handle.read(len(_HDF5_SIGNATURE))
    if signature == _HDF5_SIGNATURE:
        raise PipelineError(
            f"{flag}={path} is a Keras HDF5 file, not a TensorFlow checkpoint: convert it with "
            f"python -m official.xception.convert_keras_weights --keras_weights={path} "
            f"--model_dir=NEW_DIR and pass {flag}=NEW_DIR")
    try:
        tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError):
        raise PipelineError(f"{flag}={path} is not a TensorFlow checkpoint: give a checkpoint "
                            "directory or prefix such as model.ckpt-1000") from None


def validate_run_flags(flags_obj):
    """Raises PipelineError for any number or output location of imagenet_main that cannot work,
    before any data is read or anything is trained."""
    _check_positive_finite(flags_obj.train_epochs, "train_epochs")
    _check_positive_finite(flags_obj.epochs_between_evals, "epochs_between_evals")
    _check_int_at_least(flags_obj.max_train_steps, "max_train_steps", 1)
    _check_int_at_least(flags_obj.log_steps, "log_steps", 1)
    _check_int_at_least(flags_obj.seed, "seed", 0)
    _check_int_at_least(flags_obj.save_checkpoints_steps, "save_checkpoints_steps", 1)
    _check_int_at_least(flags_obj.keep_checkpoint_max, "keep_checkpoint_max", 0)
    try:
        preprocessing.check_central_fraction(flags_obj.eval_central_fraction)
    except PipelineError as error:
        raise PipelineError(f"--eval_central_fraction: {error}") from None
    if flags_obj.model_dir and not flags_obj.export_only:
        writable_directory(flags_obj.model_dir, "--model_dir")
    if flags_obj.export_dir:
        writable_directory(flags_obj.export_dir, "--export_dir")
    if flags_obj.pretrained_model_checkpoint_path:
        check_checkpoint_path(flags_obj.pretrained_model_checkpoint_path,
                              "--pretrained_model_checkpoint_path")


def task_name(tf_config):
    """'train' for a single process, else the TF_CONFIG task, e.g. 'worker-1' or 'evaluator-0'."""
    task = tf_config.get("task") or {}
    if not task:
        return "train"
    return f"{task.get('type', 'worker')}-{task.get('index', 0)}"


def lock_model_dir(model_dir, task):
    """Takes `model_dir`/.lock-`task` for the rest of this process's life.

    Raises:
      PipelineError: another process holds it; the message names its pid, host and start time.
    """
    if not is_local_path(model_dir):
        return  # flock needs a local (or lock-aware network) file system
    path = os.path.join(model_dir, LOCK_PREFIX + task)
    if path in _HELD_LOCKS:
        return
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not yet written its name"
        handle.close()
        raise PipelineError(
            f"--model_dir={model_dir} is in use by another training ({task}: {holder}): wait for it "
            "to finish or stop it, or give another --model_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
    handle.flush()
    _HELD_LOCKS[path] = handle


def _checkpoint_num_classes(checkpoint):
    shapes = dict(tf.train.list_variables(checkpoint))
    kernel = shapes.get(xception_model.HEAD_LAYER_NAME + "/kernel")
    return kernel[-1] if kernel else None


def check_resume_compatible(model_dir, num_classes, class_names):
    """Raises PipelineError when `model_dir` holds a checkpoint of another class count, or a class
    list other than `class_names` ([(name, text)] or None), so that nothing in it gets overwritten."""
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is not None:
        try:
            saved = _checkpoint_num_classes(latest)
        except (tf.errors.OpError, ValueError) as error:
            raise PipelineError(f"--model_dir={model_dir}: its checkpoint {latest} cannot be read "
                                f"({error}); restore it or give a new --model_dir") from None
        if saved is not None and saved != num_classes:
            raise PipelineError(
                f"--model_dir={model_dir} holds a {saved}-class checkpoint ({latest}) but this run "
                f"has {num_classes} classes: give a new --model_dir (add "
                f"--pretrained_model_checkpoint_path={model_dir} to start from its weights), or "
                "the data it was trained on")
    if class_names is None:
        return
    saved_names = dataset_info.read_class_names(model_dir)
    if saved_names is not None and [n for n, _ in saved_names] != [n for n, _ in class_names]:
        raise PipelineError(
            f"{os.path.join(model_dir, dataset_info.CLASSES_FILE)} lists other classes than "
            "--data_dir: give a new --model_dir, or the data this model was trained on")


def io_error_message(error, where):
    """A one-line description of an out-of-space error (OSError or tf.errors.OpError), else None."""
    if isinstance(error, OSError) and error.errno in _SPACE_ERRORS:
        reason = _SPACE_ERRORS[error.errno]
    else:
        message = getattr(error, "message", None) or str(error)
        reason = next((reason for text, reason in _SPACE_MESSAGES.items() if text in message), None)
        if reason is None:
            return None
    return f"{reason} while writing to {where}: free space (or raise the limit) and re-run"

