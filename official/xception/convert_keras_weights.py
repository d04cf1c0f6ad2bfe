r"""Converts Keras's Xception weights (.h5) into a checkpoint of this pipeline.

    python -m official.xception.convert_keras_weights \
        --keras_weights=xception_weights_tf_dim_ordering_tf_kernels.h5 --model_dir=/tmp/xception_keras

The checkpoint holds exactly the variables the training graph creates for the network, plus
global_step = 0, so `imagenet_main --eval_only`, export and warm start read it as they read their own.
Keras's full and no-top files are accepted (also a whole model saved with `model.save(...h5)`). Keras
leaves the four residual shortcuts unnamed (`conv2d`, `batch_normalization_2`, … depending on the
session that saved them); they are mapped by order. With --num_classes=1001 the 1000-way head gets a
background class 0 whose kernel column and bias are zero, for data labelled 1..1000.
"""

import os
import shutil
import sys
import tempfile

from absl import app
from absl import flags
import h5py
import numpy as np
import tensorflow as tf

from official.utils import flags_core
from official.utils import logging_setup
from official.utils import provenance
from official.utils import run_safety
from official.utils.errors import PipelineError
from official.xception import run_record
from official.xception import xception_model

CHECKPOINT_PREFIX = "model.ckpt"

# Every weight of a layer is identified by the last component of its Keras name.
_CONV_WEIGHTS = ("kernel",)
_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")


def _weight_suffix(name):
    """'block1_conv1_bn/gamma:0' -> 'gamma'."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def _decode(name):
    return name.decode("utf8") if isinstance(name, bytes) else name


def read_keras_h5(path):
    """Returns [(layer name, {weight suffix: array})] for the layers with weights, in the file's order."""
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise PipelineError(f"--keras_weights={path}: not a readable HDF5 file ({error})") from None
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in root.attrs:
            raise PipelineError(
                f"--keras_weights={path}: not a Keras weights file (no 'layer_names'); save it with "
                "model.save_weights('….h5') or model.save('….h5')")
        layers = []
        for layer_name in map(_decode, root.attrs["layer_names"]):
            group = root[layer_name]
            weight_names = [_decode(n) for n in group.attrs.get("weight_names", [])]
            if weight_names:
                layers.append((layer_name, {_weight_suffix(n): np.asarray(group[n]) for n in weight_names}))
        return layers


def _expected_layers(model):
    """[(layer name, {weight suffix: variable})] of `model`'s layers with weights, in model order."""
    return [(layer.name, {_weight_suffix(w.name): w for w in layer.weights})
            for layer in model.layers if layer.weights]


def _map_residual_layers(unmatched_file_layers, path):
    """Maps Keras's unnamed shortcut layers, by order, to block{2,3,4,13}_residual_{conv,bn}."""
    convs = [layer for layer in unmatched_file_layers if set(layer[1]) == set(_CONV_WEIGHTS)]
    norms = [layer for layer in unmatched_file_layers if set(layer[1]) == set(_BN_WEIGHTS)]
    others = [name for name, _ in unmatched_file_layers
              if name not in {n for n, _ in convs + norms}]
    blocks = xception_model.RESIDUAL_BLOCKS
    if others or len(convs) != len(blocks) or len(norms) != len(blocks):
        raise PipelineError(
            f"--keras_weights={path}: not a Keras Xception: expected {len(blocks)} unnamed residual "
            f"conv and batch-norm layers, found {len(convs)} conv, {len(norms)} batch-norm"
            + (f" and unknown layers {others[:5]}" if others else ""))
    mapping = {}
    for block, conv, norm in zip(blocks, convs, norms):
        mapping[f"block{block}_residual_conv"] = conv
        mapping[f"block{block}_residual_bn"] = norm
    return mapping


def match_weights(file_layers, model, path, num_classes):
    """Returns ([(variable, array)], description lines); raises PipelineError naming what differs."""
    expected = _expected_layers(model)
    expected_names = {name for name, _ in expected}
    by_name = {name: weights for name, weights in file_layers}
    unmatched = [(name, weights) for name, weights in file_layers if name not in expected_names]
    residual = _map_residual_layers(unmatched, path)
    missing = [name for name, _ in expected if name not in by_name and name not in residual]
    if missing:
        raise PipelineError(
            f"--keras_weights={path}: not a Keras Xception: missing layers {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))

    pairs = []
    notes = [f"residual shortcuts mapped by order: "
             + ", ".join(f"{residual[n][0]} -> {n}" for n in sorted(residual, key=_block_order))]
    for layer_name, variables in expected:
        file_weights = residual[layer_name][1] if layer_name in residual else by_name[layer_name]
        if set(file_weights) != set(variables):
            raise PipelineError(
                f"--keras_weights={path}: layer {layer_name} has weights {sorted(file_weights)}, "
                f"Xception needs {sorted(variables)}")
        for suffix, variable in variables.items():
            value = file_weights[suffix]
            target_shape = tuple(variable.shape)
            if layer_name == xception_model.HEAD_LAYER_NAME and value.shape[-1] + 1 == num_classes:
                # Background class 0 in front of the file's classes: labels 1..N then index the same rows.
                value = np.concatenate([np.zeros_like(value[..., :1]), value], axis=-1)
                if suffix == "kernel":
                    notes.append(f"head: {num_classes - 1} -> {num_classes} classes, background class 0 "
                                 "with a zero kernel column and zero bias")
            if value.shape != target_shape:
                raise PipelineError(
                    f"--keras_weights={path}: shape mismatch for {layer_name}/{suffix}: the file has "
                    f"{value.shape}, the network needs {target_shape}"
                    + (" (set --num_classes to the file's class count, or that plus 1 for a background "
                       "class)" if layer_name == xception_model.HEAD_LAYER_NAME else ""))
            pairs.append((variable, value))
    return pairs, notes


def _block_order(name):
    return int(name[len("block"):].split("_", 1)[0])


def _check_output_dir(model_dir):
    if os.path.exists(model_dir):
        if not os.path.isdir(model_dir):
            raise PipelineError(f"--model_dir={model_dir} exists and is not a directory")
        if os.listdir(model_dir):
            raise PipelineError(
                f"--model_dir={model_dir} is not empty; convert into a new or empty directory so no "
                "checkpoint or training state is overwritten")
    parent = os.path.dirname(os.path.abspath(model_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise PipelineError(f"--model_dir={model_dir}: cannot write in {parent}")


def convert(keras_weights, model_dir, num_classes=None):
    """Converts `keras_weights` into a checkpoint in `model_dir`; returns a summary of what was done.

    Nothing is written when the file is not a Keras Xception or does not fit `num_classes`, and
    nothing is left behind when writing fails (a full disk).
    """
    if num_classes is not None and num_classes < 1:
        raise PipelineError(f"--num_classes={num_classes}: must be at least 1 (the file's class "
                            "count, or that plus 1 for a background class); leave it out to take "
                            "the file's")
    if not os.path.isfile(keras_weights):
        raise PipelineError(f"--keras_weights={keras_weights}: no such file")
    _check_output_dir(model_dir)
    file_layers = read_keras_h5(keras_weights)
    file_head = dict(file_layers).get(xception_model.HEAD_LAYER_NAME)
    include_top = file_head is not None
    if include_top and num_classes is None:
        num_classes = file_head["bias"].shape[0]
    if not include_top and num_classes is not None:
        raise PipelineError(
            f"--keras_weights={keras_weights} has no classifier head (a no-top file), so --num_classes "
            "does not apply; leave it out")

    with tf.Graph().as_default():
        # Built in a v1 graph, as in the Estimator's model_fn, so the variable names are the same.
        # The image size does not change any variable's shape; the smallest builds fastest.
        model = xception_model.xception(num_classes=num_classes or 1000, include_top=include_top,
                                        image_size=xception_model.MIN_IMAGE_SIZE)
        pairs, notes = match_weights(file_layers, model, keras_weights, num_classes)
        named_values = {variable.op.name: value for variable, value in pairs}
        not_finite = next((name for name, value in named_values.items()
                           if np.issubdtype(value.dtype, np.floating)
                           and not np.isfinite(value).all()), None)
        if not_finite is not None:
            raise PipelineError(f"--keras_weights={keras_weights}: {not_finite} holds NaN or "
                                "infinite values (a damaged or diverged file); nothing was written")
        layer_count = len(_expected_layers(model))
    named_values[tf.compat.v1.GraphKeys.GLOBAL_STEP] = np.int64(0)

    # An eager name-based Saver writes the same files as a Session's, without running initializers.
    saver = tf.compat.v1.train.Saver(
        {name: tf.Variable(value) for name, value in named_values.items()},
        save_relative_paths=True)  # so the files can move from staging into model_dir
    parent = os.path.dirname(os.path.abspath(model_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        path = saver.save(None, os.path.join(staging, CHECKPOINT_PREFIX), global_step=0,
                          write_meta_graph=False)
        # Moved in with the checkpoint: its exports then name the file the weights came from.
        provenance.append_record(staging, run_record.conversion_record(keras_weights, num_classes))
        _move_checkpoint(staging, model_dir)
    except (OSError, tf.errors.OpError) as error:
        message = run_safety.io_error_message(error, f"--model_dir={model_dir}")
        if message is None:
            raise
        raise PipelineError(f"{message}; nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    values = sum(int(np.prod(value.shape)) for _, value in pairs)
    return [
        f"converted {len(pairs)} tensors ({values:,} values) of {layer_count} layers "
        f"from {keras_weights}",
        f"network: {'with' if include_top else 'without'} the head"
        + (f", {num_classes} classes" if include_top else ""),
        *notes,
        f"checkpoint: {os.path.join(model_dir, os.path.basename(path))} (global_step 0)",
        f"provenance: {run_record.record_path(model_dir)} (the source file's SHA-256)",
    ]


def _move_checkpoint(staging, model_dir):
    """Moves the finished checkpoint into `model_dir`, the `checkpoint` index last so that readers
    never see an index that names missing files."""
    os.makedirs(model_dir, exist_ok=True)
    for name in sorted(os.listdir(staging), key=lambda name: name == "checkpoint"):
        os.replace(os.path.join(staging, name), os.path.join(model_dir, name))


def define_flags():
    flags.DEFINE_string("keras_weights", None, "Keras Xception weights (.h5), full or no-top.")
    flags.DEFINE_string("model_dir", None, "New or empty directory for the checkpoint.")
    flags.DEFINE_integer(
        "num_classes", None,
        "Classes of the head: the file's (1000 for Keras's ImageNet weights) or that plus 1 to add a "
        "background class 0 (for data labelled 1..1000 trained 1001-way). Default: the file's.")
    flags.mark_flags_as_required(["keras_weights", "model_dir"])


def main(argv):
    del argv
    logging_setup.log_through_absl_only()
    problem = flags_core.check_numeric_flags(flags.FLAGS)
    if problem:
        sys.exit(f"error: {problem}")
    try:
        lines = convert(flags.FLAGS.keras_weights, flags.FLAGS.model_dir, flags.FLAGS.num_classes)
    except PipelineError as error:
        sys.exit(f"error: {error}")
    print("\n".join(lines))


if __name__ == "__main__":
    define_flags()
    app.run(main)
