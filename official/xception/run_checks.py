"""Checks of an Xception run that fail in one line before any long work.

- validate_run_flags: every number and output location of imagenet_main, checked before the graph is
  built (a bad --export_dir would otherwise surface only after a whole training cycle).
- check_checkpoint_path: a warm-start path is a TensorFlow checkpoint (a Keras .h5 gets the converter
  named).
- check_resume_compatible: a model directory's checkpoint and class list must fit the data before
  anything is written into it.
"""

import os

import tensorflow as tf

from official.utils import dataset_info
from official.utils import flags_core
from official.utils import run_safety
from official.utils.errors import PipelineError
from official.xception import preprocessing
from official.xception import xception_model

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_checkpoint_path(path, flag):
    """A warm-start path must be a TensorFlow checkpoint; a Keras .h5 gets the converter named."""
    if not run_safety.is_local_path(path) or not os.path.isfile(path):
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
    problem = flags_core.check_numeric_flags(flags_obj)
    if problem:
        raise PipelineError(problem)
    try:
        preprocessing.check_central_fraction(flags_obj.eval_central_fraction)
    except PipelineError as error:
        raise PipelineError(f"--eval_central_fraction: {error}") from None
    if flags_obj.model_dir and not flags_obj.export_only:
        run_safety.writable_directory(flags_obj.model_dir, "--model_dir")
    if flags_obj.export_dir:
        run_safety.writable_directory(flags_obj.export_dir, "--export_dir")
    if flags_obj.pretrained_model_checkpoint_path:
        check_checkpoint_path(flags_obj.pretrained_model_checkpoint_path,
                              "--pretrained_model_checkpoint_path")


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
