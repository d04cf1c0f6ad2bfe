"""Estimator input functions over ImageNet TFRecord shards (schema: see docs/DESIGN.md §3), and
synthetic data.

Training: the split's files are sharded across input pipelines (workers), their order is reshuffled
every epoch, shards are read in parallel, records are shuffled, repeated forever, parsed and
preprocessed in parallel, batched with drop_remainder and prefetched.

Evaluation: every record exactly once, in a fixed order (files sorted by name, records in file order),
with a final partial batch.
"""

import hashlib
import os
import re
import threading

from absl import logging
import numpy as np
import tensorflow as tf

from official.utils import dataset_info
from official.utils import record_schema
from official.utils.errors import PipelineError
from official.xception import preprocessing

TRAIN_PATTERN = "train-*-of-*"
VALIDATION_PATTERN = "validation-*-of-*"

# Shards read at the same time. Enough to hide file latency on network storage and to mix classes
# further than the record shuffle buffer alone does; each open shard holds one read buffer.
_TRAIN_CYCLE_LENGTH = 16
_READ_BUFFER_BYTES = 8 * 1024 * 1024

_SHARD_NAME = record_schema.SHARD_NAME

# Starts the message of a record that breaks the schema (record_schema.record_problem), so that it
# can be found again in the error tf.data raises around it.
_BAD_RECORD = "bad record: "

# Records that break the schema and images that did not decode, left out by skip_corrupt_records in
# this process, counted as they fail (tf.data's ignore_errors counts nothing).
_skipped_images = 0
_skipped_images_lock = threading.Lock()



def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineError(f"{name} must be a positive integer, got {value!r}")


def shard_set_size(path):
    """N of a shard named `{split}-%05d-of-N`."""
    return int(_SHARD_NAME.match(os.path.basename(path)).group(3))


def _incomplete_hint(data_dir):
    """What to do about missing shards: data_prep resumes its own builds; other shards are copied."""
    try:
        info = dataset_info.read_dataset_info(data_dir)
    except PipelineError:  # an unreadable summary is reported where it matters, not here
        info = None
    if info is not None and info.built_by == dataset_info.BUILT_BY_DATA_PREP:
        return ("finish the data_prep run (rerunning it resumes), or pass "
                "--allow_incomplete_shards to use only the shards present")
    return ("copy the missing shards, or pass --allow_incomplete_shards to use only the shards "
            "present")


def _check_complete(files, pattern, data_dir, allow_incomplete):
    """Raises PipelineError unless `files` are shards 0..N-1 of one set of N (a missing shard would
    silently leave images out of training and evaluation), or any of them if `allow_incomplete`."""
    totals = {shard_set_size(path) for path in files}
    if len(totals) > 1:
        raise PipelineError(
            f"files matching {pattern} come from shard sets of different sizes "
            f"({', '.join(str(total) for total in sorted(totals))}): keep one set in --data_dir")
    total = totals.pop()
    present = {int(_SHARD_NAME.match(os.path.basename(path)).group(2)) for path in files}
    missing = sorted(set(range(total)) - present)
    if missing and not allow_incomplete:
        first = os.path.basename(files[0]).split("-")[0] + "-%05d-of-%05d" % (missing[0], total)
        raise PipelineError(
            f"{len(missing)} of {total} shards matching {pattern} are missing (first: {first}): "
            + _incomplete_hint(data_dir))


def list_input_files(data_dir, is_training, input_context=None, allow_incomplete_shards=False):
    """The sorted shard paths of the split that this input pipeline reads.

    Every shard of the set must be present unless `allow_incomplete_shards` (a subset copied for
    debugging, say); then the shards present are used.

    With an `input_context` of several input pipelines, pipeline i takes every n-th file starting at
    file i, so workers read disjoint sets of files that together cover the split.

    Raises:
      PipelineError: no file matches the split's pattern in `data_dir`, shards of the set are missing,
        or there are fewer files than pipelines.
    """
    pattern = os.path.join(data_dir, TRAIN_PATTERN if is_training else VALIDATION_PATTERN)
    files = sorted(path for path in tf.io.gfile.glob(pattern)
                   if _SHARD_NAME.match(os.path.basename(path)))
    if not files:
        raise PipelineError(
            f"no files match {pattern}: point --data_dir at the directory of TFRecord shards that "
            "data_prep writes (train-00000-of-01024, validation-00000-of-00128, ...)")
    for path in files:
        record_schema.check_regular_file(path)
    _check_complete(files, pattern, data_dir, allow_incomplete_shards)
    if input_context is None or input_context.num_input_pipelines == 1:
        return files
    count = input_context.num_input_pipelines
    if len(files) < count:
        raise PipelineError(
            f"only {len(files)} files match {pattern} for {count} input pipelines (workers): "
            "write at least one shard per worker")
    if len(files) % count and input_context.input_pipeline_id == 0:
        # Every worker takes the same number of steps, so a worker with one file fewer goes
        # through its records more often: by 1/(files per worker) at most.
        fewer = len(files) // count
        logging.warning(
            "%d files matching %s do not divide evenly among %d workers: %d read %d files, the "
            "others %d, so the records of the latter are seen up to %.1f%% more often; use a shard "
            "count that is a multiple of the worker count to avoid it", len(files), pattern, count,
            len(files) % count, fewer + 1, fewer, 100.0 / fewer)
    return files[input_context.input_pipeline_id::count]


def shuffle_seed(seed, input_pipeline_id, start_step):
    """The seed of one input pipeline's file and record order, from --seed, the pipeline (worker)
    index and the global step training starts from: workers, training cycles and resumed runs each
    draw their own order, while the same three values always give the same one."""
    digest = hashlib.sha256(f"{seed}/{input_pipeline_id}/{start_step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def _label_hint(label_offset, num_classes):
    return (f"; --label_offset={label_offset} and --num_classes={num_classes} accept labels "
            f"{label_offset}..{label_offset + num_classes - 1}: use --label_offset=1 for labels "
            "1..1000 with 1000 classes, --label_offset=0 for 1001 classes or 0-based labels")


def checked_records(path, labels, skip_corrupt_records=False, label_hint=""):
    """The records of one shard that pass record_schema.record_problem against `labels`.

    A record that does not raises InvalidArgumentError whose message `data_error_message` turns into
    `path record N: problem` (+ `label_hint` for a label problem), or, with `skip_corrupt_records`,
    is counted and left out (as are unreadable bytes, which end the shard); a label outside
    `labels` says the flags do not fit the data, and stays an error.
    """
    records = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES)
    if skip_corrupt_records:
        records = records.ignore_errors()

    def check(shard, index, serialized):
        """(keep, message): the message of a record that stops the run, else ""."""
        problem = record_schema.record_problem(serialized, labels)
        if problem is None:
            return True, b""
        is_label = problem.startswith(record_schema.LABEL_PROBLEM)
        if skip_corrupt_records and not is_label:  # a label outside the flags is no corruption
            _count_skipped_image()
            return False, b""
        if is_label:
            problem += label_hint
        return False, f"{_BAD_RECORD}{shard.decode()} record {index}: {problem}".encode()

    def stop_on_problem(serialized, keep, message):
        # Raised by an Assert rather than from Python: TensorFlow logs a Python exception of
        # numpy_function with its whole traceback.
        check_op = tf.debugging.Assert(tf.equal(message, ""), [message])
        with tf.control_dependencies([check_op]):
            return tf.identity(serialized), keep

    checked = records.enumerate().map(
        lambda index, serialized: (serialized, *tf.numpy_function(
            check, [path, index, serialized], [tf.bool, tf.string], name="record_schema_check")))
    checked = checked.map(stop_on_problem)
    return checked.filter(lambda serialized, keep: keep).map(lambda serialized, keep: serialized)


_IMAGE_FEATURES = {
    record_schema.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    record_schema.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}
_TRAIN_FEATURES = dict(_IMAGE_FEATURES, **{key: tf.io.VarLenFeature(tf.float32)
                                           for key in record_schema.BOX_KEYS})


def parse_record(serialized, label_offset, with_boxes):
    """(image bytes, label int32, boxes [1, N, 4] or None) of a record that checked_records passed."""
    features = tf.io.parse_single_example(serialized,
                                          _TRAIN_FEATURES if with_boxes else _IMAGE_FEATURES)
    boxes = None
    if with_boxes:
        boxes = tf.stack([tf.sparse.to_dense(features[key]) for key in record_schema.BOX_KEYS],
                         axis=1)[tf.newaxis]
    label = tf.cast(features[record_schema.LABEL_KEY] - label_offset, tf.int32)
    return features[record_schema.IMAGE_KEY], label, boxes


def skipped_image_count():
    """Images left out by `input_fn(..., skip_corrupt_records=True)` in this process so far."""
    return _skipped_images


def _count_skipped_image():
    global _skipped_images
    with _skipped_images_lock:
        _skipped_images += 1
    return np.int64(0)


def _preprocess_or_count(preprocess, parsed, image_size, dtype):
    """A dataset of preprocess(*parsed), or an empty one that has counted the failure."""
    attempt = tf.data.Dataset.from_tensors(parsed).map(preprocess).ignore_errors()
    # Runs only when `attempt` ends empty: concatenate opens it lazily and take(1) stops before it.
    counted = (tf.data.Dataset.from_tensors(np.int64(0))
               .map(lambda _: tf.numpy_function(_count_skipped_image, [], tf.int64))
               .filter(lambda _: False)
               .map(lambda _: (tf.zeros([image_size, image_size, 3], dtype), tf.constant(0))))
    return attempt.concatenate(counted).take(1)


def data_error_message(error):
    """The one-line message of a record check of this module that failed while the dataset ran.

    Args:
      error: a tf.errors.OpError raised while iterating an `input_fn` dataset.

    Returns:
      The check's message with the offending value (for main modules to print instead of a
      traceback), or None when `error` is something else.
    """
    match = re.search(re.escape(_BAD_RECORD) + r"(.*?)\]", error.message)
    return match.group(1) if match else None


def input_fn(is_training, data_dir, batch_size, input_context=None, *, image_size=299,
             num_classes=1000, label_offset=1, dtype=tf.float32, shuffle_buffer=10000,
             augmentation=preprocessing.AugmentationConfig(), eval_central_fraction=0.875,
             datasets_num_private_threads=None, seed=None, start_step=0,
             allow_incomplete_shards=False, skip_corrupt_records=False):
    """A tf.data.Dataset of (images [B, S, S, 3] `dtype` in [-1, 1], labels int32 [B]).

    Args:
      is_training: training (shuffled, augmented, repeated, full batches) or evaluation (every
        record once, fixed order, final partial batch).
      data_dir: directory holding `train-*-of-*` / `validation-*-of-*` TFRecord shards.
      batch_size: the per-replica batch size.
      image_size: output height and width (>= 71).
      num_classes: number of logits; labels must end up in [0, num_classes).
      label_offset: subtracted from each record's image/class/label (1 for the established 1..1000
        labels with 1000 classes, 0 for 1001 classes or 0-based data).
      dtype: image dtype, float32, bfloat16 or float16.
      shuffle_buffer: records in the training shuffle buffer.
      augmentation: preprocessing.AugmentationConfig for training.
      eval_central_fraction: fraction of each side kept by the evaluation central crop.
      datasets_num_private_threads: size of a private tf.data thread pool (None: TF's shared pool).
      input_context: tf.distribute.InputContext; each input pipeline then reads a disjoint set of files.
        It is a positional-or-keyword parameter because the Estimator passes it only to input
        functions whose positional parameters name it (bind the others with functools.partial).
      seed: fixes the file and record shuffling order (the order of training batches becomes
        deterministic, at some cost in speed); the random crops and flips stay unseeded.
      start_step: the global step training starts from; with `seed`, the order depends on it and on
        the input pipeline's index (see `shuffle_seed`).
      allow_incomplete_shards: read the shards present even when some of their set are missing.

    Raises:
      PipelineError: for bad arguments or when no file matches the split's pattern.
    """
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(num_classes, "num_classes")
    if isinstance(label_offset, bool) or not isinstance(label_offset, int) or label_offset < 0:
        raise PipelineError(f"label_offset must be 0 or a positive integer, got {label_offset!r}")
    if is_training:
        _check_positive_int(shuffle_buffer, "shuffle_buffer")
    if datasets_num_private_threads is not None:
        _check_positive_int(datasets_num_private_threads, "datasets_num_private_threads")
    preprocessing.check_image_size(image_size)
    preprocessing.check_central_fraction(eval_central_fraction)
    dtype = preprocessing.check_output_dtype(dtype)
    files = list_input_files(data_dir, is_training, input_context, allow_incomplete_shards)
    if seed is not None:
        seed = shuffle_seed(seed, input_context.input_pipeline_id if input_context else 0,
                            start_step)

    labels = record_schema.LabelRange(label_offset, num_classes)
    hint = _label_hint(label_offset, num_classes)

    def read_records(path):
        return checked_records(path, labels, skip_corrupt_records, hint)

    def parse(serialized):
        image_bytes, label, boxes = parse_record(serialized, label_offset, with_boxes=is_training)
        return (image_bytes, label, boxes) if is_training else (image_bytes, label)

    def preprocess(image_bytes, label, boxes=None):
        if is_training:
            image = preprocessing.preprocess_for_train(image_bytes, boxes, image_size, augmentation,
                                                       dtype)
        else:
            image = preprocessing.preprocess_for_eval(image_bytes, image_size,
                                                      eval_central_fraction, dtype)
        return image, label

    if is_training:
        # Training order only matters for reproducibility when a seed is given; otherwise let
        # parallel stages hand out whichever element is ready first.
        deterministic = seed is not None
        dataset = tf.data.Dataset.from_tensor_slices(files)
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
        # More open readers than files would read copies of the same file side by side (the list
        # repeats), feeding the shuffle buffer runs of identical records.
        dataset = dataset.interleave(read_records, cycle_length=min(_TRAIN_CYCLE_LENGTH, len(files)),
                                     num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=deterministic)
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    else:
        deterministic = True
        # One reader per file: records are named by shard, and skipped unreadable bytes end one
        # file, not all.
        dataset = tf.data.Dataset.from_tensor_slices(files).flat_map(read_records)
    if skip_corrupt_records:
        # Separate maps so that a failed decode skips one image (records that break the schema
        # were skipped by read_records).
        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=deterministic)
        dataset = dataset.interleave(
            lambda *parsed: _preprocess_or_count(preprocess, parsed, image_size, dtype),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    else:
        dataset = dataset.map(lambda serialized: preprocess(*parse(serialized)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=is_training)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    # Each element's ops run on one thread; parallelism comes from the parallel map.
    options.threading.max_intra_op_parallelism = 1
    if datasets_num_private_threads is not None:
        options.threading.private_threadpool_size = datasets_num_private_threads
    if input_context is not None:
        # The files are already split between pipelines above; auto-sharding would split them again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def synthetic_input_fn(is_training, batch_size, *, image_size=299, num_classes=1000,
                       dtype=tf.float32):
    """One random batch made once on the device and repeated forever: no I/O, for benchmarks.

    `is_training` is accepted so that callers can swap this for `input_fn` with the same arguments;
    synthetic data is the same for both modes.
    """
    del is_training
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(num_classes, "num_classes")
    preprocessing.check_image_size(image_size)
    dtype = preprocessing.check_output_dtype(dtype)
    images = tf.random.uniform([batch_size, image_size, image_size, 3], -1.0, 1.0)
    labels = tf.random.uniform([batch_size], 0, num_classes, dtype=tf.int32)
    return tf.data.Dataset.from_tensors((tf.cast(images, dtype), labels)).repeat()
