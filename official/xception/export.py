"""SavedModel export of a trained (or converted) checkpoint, for evaluation and serving.

The SavedModel is written the TensorFlow 2 way, from an eager copy of the network whose variables are
read from the checkpoint by name (the Polyak averages of every weight, and of the batch-norm moving
statistics, where the checkpoint has them). It has a dynamic batch dimension and two signatures:

- `serving_default`: `image_bytes` (string [None], JPEG or PNG) through exactly the evaluation
  preprocessing of the training pipeline;
- `predict_images`: `images` (float32 [None, size, size, 3], already preprocessed to [-1, 1]).

Both return `classes` (int64), `class_names`, `probabilities`, `logits`, `top_5_classes`,
`top_5_class_names` and `top_5_probabilities`. Output index i is the class whose data label is
i + label_offset; `assets/classes.tsv` lists index, name (synset) and human text for every output, and
`assets.extra/export_info.json` records the conventions (label offset, image size, crop fraction) and
which weights it holds, `assets.extra/provenance.jsonl` the records of the runs that made the
checkpoint (docs/DESIGN.md §11).
"""

import json
import os
import re
import shutil
import socket
import tempfile
import time

import tensorflow as tf

from official.utils import dataset_info
from official.utils.errors import PipelineError
from official.xception import preprocessing
from official.xception import xception_model

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
EXPORT_INFO = "export_info.json"
_AVERAGE_SUFFIX = "/ExponentialMovingAverage"
_TOP_K = 5
# An export is written below `.export-<host>-<pid>-...` and renamed into place when complete.
_STAGING_PREFIX = ".export-"


def checkpoint_values(checkpoint_path, variables, use_moving_averages=True):
    """The checkpoint's value for each of `variables` (matched by name): the Polyak averages of all
    trainable variables where the checkpoint has them, and of all non-trainable ones (batch-norm moving
    statistics) where it has theirs; the raw values otherwise.

    Returns:
      (list of arrays aligned with `variables`, number of variables read from their averages).
    Raises:
      PipelineError: a variable is missing from the checkpoint or has another shape, or the checkpoint
        has the averages of some trainable (or non-trainable) variables but not of all.
    """
    reader = tf.train.load_checkpoint(checkpoint_path)
    shapes = reader.get_variable_to_shape_map()
    names = [variable.name.split(":")[0] for variable in variables]
    averaged_names = set()
    if use_moving_averages:
        for trainable, kind in ((True, "trainable variables"), (False, "non-trainable variables")):
            group = [name for name, variable in zip(names, variables) if variable.trainable == trainable]
            with_average = [name for name in group if name + _AVERAGE_SUFFIX in shapes]
            if with_average and len(with_average) != len(group):
                missing = next(name for name in group if name + _AVERAGE_SUFFIX not in shapes)
                raise PipelineError(
                    f"checkpoint {checkpoint_path} has the moving averages of only "
                    f"{len(with_average)} of {len(group)} {kind} (not of {missing}): was it written "
                    "by another network or program? Export its raw weights with "
                    "--moving_average_decay=0")
            averaged_names.update(with_average)
    values = []
    for name, variable in zip(names, variables):
        if name in averaged_names:
            name += _AVERAGE_SUFFIX
        if name not in shapes:
            raise PipelineError(
                f"checkpoint {checkpoint_path} has no variable {name}: was it written for another "
                "network or class count (--num_classes)?")
        if tuple(shapes[name]) != tuple(variable.shape):
            raise PipelineError(
                f"checkpoint {checkpoint_path}: {name} has shape {tuple(shapes[name])}, the network "
                f"needs {tuple(variable.shape)} (check --num_classes)")
        values.append(reader.get_tensor(name))
    return values, len(averaged_names)


class _Classifier(tf.Module):
    """The exported object: the network, its class list and the two serving functions."""

    def __init__(self, model, class_rows, classes_asset, image_size, central_fraction):
        super().__init__()
        self.model = model
        self.classes_asset = tf.saved_model.Asset(classes_asset)
        self._names = tf.constant([synset for synset, _ in class_rows])
        self._image_size = image_size
        self._central_fraction = central_fraction
        self.predict_images = tf.function(
            self._checked_predict_images,
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, "images")])
        self.serve_image_bytes = tf.function(
            self._serve_image_bytes, input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")])

    def _checked_predict_images(self, images):
        # A signature's declared shape is not enforced when it is called through the SavedModel
        # (TF Serving, `signatures[...]`): other sizes and NaN pixels would be answered silently.
        size = self._image_size
        checks = [
            tf.debugging.assert_equal(
                tf.shape(images)[1:], tf.constant([size, size, 3]),
                message=f"predict_images takes images of shape [batch, {size}, {size}, 3] "
                        "(preprocessed to [-1, 1]); got another shape"),
            tf.debugging.assert_all_finite(
                images, "predict_images takes finite pixel values (preprocessed to [-1, 1])"),
        ]
        with tf.control_dependencies(checks):
            return self._predict_images(tf.identity(images))

    def _predict_images(self, images):
        # The convolution kernels reject an empty batch: an empty request runs one blank image and
        # answers with its outputs cut to zero rows.
        count = tf.shape(images)[0]
        blank = tf.zeros([1, self._image_size, self._image_size, 3], images.dtype)
        outputs = self._outputs(tf.cond(count > 0, lambda: images, lambda: blank))
        return {key: value[:count] for key, value in outputs.items()}

    def _outputs(self, images):
        logits = tf.cast(self.model(images, training=False), tf.float32)
        probabilities = tf.nn.softmax(logits)
        # Ranked by logits: distinct logits can round to equal (zero) probabilities.
        top_classes = tf.math.top_k(logits, k=min(_TOP_K, logits.shape[-1])).indices
        classes = tf.argmax(logits, axis=-1)
        return {
            "classes": classes,
            "class_names": tf.gather(self._names, classes),
            "probabilities": probabilities,
            "logits": logits,
            "top_5_classes": tf.cast(top_classes, tf.int64),
            "top_5_class_names": tf.gather(self._names, top_classes),
            "top_5_probabilities": tf.gather(probabilities, top_classes, batch_dims=1),
        }

    def _serve_image_bytes(self, image_bytes):
        images = tf.map_fn(
            lambda one: preprocessing.preprocess_for_eval(one, self._image_size, self._central_fraction),
            image_bytes, fn_output_signature=tf.TensorSpec([self._image_size] * 2 + [3], tf.float32))
        return self._predict_images(images)


def _class_rows(class_names, num_classes):
    """[(synset, text)] for every output index; placeholder names when the class list is unknown."""
    if class_names is None:
        return [(f"class_{index}", f"class {index}") for index in range(num_classes)]
    rows = [(name, text) if text else (name, name) for name, text in class_names]
    if len(rows) != num_classes:
        raise PipelineError(
            f"the class list has {len(rows)} entries but the network has {num_classes} outputs "
            "(check --num_classes and --label_offset)")
    return rows


def export_saved_model(checkpoint_path, export_dir_base, *, num_classes, image_size=299,
                       label_offset=1, class_names=None, central_fraction=0.875,
                       use_moving_averages=True, model_builder=xception_model.xception,
                       provenance_file=None):
    """Exports `checkpoint_path` as a SavedModel in a new `export_dir_base/<unix time>` directory.

    Args:
      checkpoint_path: a checkpoint prefix (or a directory: its latest checkpoint).
      export_dir_base: parent directory; each export is a numbered version below it (TF Serving's
        layout), written to a temporary name first so a version directory is always complete.
      num_classes: outputs of the network.
      image_size: input side of the network and of the serving preprocessing.
      label_offset: the data labels are output index + label_offset (recorded for evaluation).
      class_names: [(synset, human text)] per output index, or None (placeholder names).
      central_fraction: evaluation crop fraction used by `serving_default`.
      use_moving_averages: read the Polyak averages of the weights where the checkpoint has them.
      model_builder: builds the network, with xception()'s keyword arguments.
      provenance_file: the JSON-lines record of the runs that made the checkpoint, copied to
        `assets.extra/provenance.jsonl` when it exists.

    Returns:
      (export path, number of variables read from moving averages).
    """
    if tf.io.gfile.isdir(checkpoint_path):
        directory, checkpoint_path = checkpoint_path, tf.train.latest_checkpoint(checkpoint_path)
        if checkpoint_path is None:
            raise PipelineError(f"no checkpoint in {directory}: train first or point at a checkpoint")
    rows = _class_rows(class_names, num_classes)
    # Serving runs anywhere: float32, channels_last, no dropout, whatever the training settings were.
    model = model_builder(num_classes=num_classes, image_size=image_size)
    values, averaged = checkpoint_values(checkpoint_path, model.weights, use_moving_averages)
    model.set_weights(values)

    os.makedirs(export_dir_base, exist_ok=True)
    _remove_dead_staging(export_dir_base)
    staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-",
                               dir=export_dir_base)
    try:
        dataset_info.write_class_names(staging, rows)
        classifier = _Classifier(model, rows, os.path.join(staging, dataset_info.CLASSES_FILE),
                                 image_size, central_fraction)
        saved_model_dir = os.path.join(staging, "saved_model")
        tf.saved_model.save(classifier, saved_model_dir, signatures={
            SERVING_SIGNATURE: classifier.serve_image_bytes,
            IMAGES_SIGNATURE: classifier.predict_images,
        })
        reader = tf.train.load_checkpoint(checkpoint_path)
        info = {
            "checkpoint": checkpoint_path,
            "global_step": int(reader.get_tensor("global_step"))
            if reader.has_tensor("global_step") else None,
            "num_classes": num_classes,
            "label_offset": label_offset,
            "image_size": image_size,
            "central_fraction": central_fraction,
            "moving_averages": averaged,
            # Which weights the export holds: their Polyak averages where the checkpoint has them.
            "weights": "polyak_averages" if averaged else "raw",
        }
        os.makedirs(os.path.join(saved_model_dir, "assets.extra"))
        with open(os.path.join(saved_model_dir, "assets.extra", EXPORT_INFO), "w") as handle:
            json.dump(info, handle, indent=1)
        if provenance_file and tf.io.gfile.exists(provenance_file):
            tf.io.gfile.copy(provenance_file, os.path.join(saved_model_dir, "assets.extra",
                                                           os.path.basename(provenance_file)))
        export_path = os.path.join(export_dir_base, str(int(time.time())))
        while os.path.exists(export_path):  # two exports within a second
            export_path = os.path.join(export_dir_base, str(int(os.path.basename(export_path)) + 1))
        os.rename(saved_model_dir, export_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export_path, averaged


def _remove_dead_staging(export_dir_base):
    """Removes the staging folders of exports on this host whose process is gone (killed mid-export);
    other hosts' may still be writing."""
    pattern = re.compile(re.escape(f"{_STAGING_PREFIX}{socket.gethostname()}-") + r"(\d+)-")
    for name in os.listdir(export_dir_base):
        match = pattern.match(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(export_dir_base, name), ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def read_export_info(saved_model_dir):
    """The conventions recorded by export_saved_model (label offset, image size, …)."""
    path = os.path.join(saved_model_dir, "assets.extra", EXPORT_INFO)
    if not tf.io.gfile.exists(path):
        raise PipelineError(
            f"{saved_model_dir} has no assets.extra/{EXPORT_INFO}: export it with imagenet_main "
            "--export_dir (or --export_only)")
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def read_class_names(saved_model_dir):
    """[(name, text)] per output index from the export's classes asset."""
    return dataset_info.read_class_names(os.path.join(saved_model_dir, "assets"))
