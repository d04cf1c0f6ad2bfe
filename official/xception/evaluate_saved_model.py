r"""Top-1 / top-5 accuracy of an exported SavedModel over the validation shards.

    python -m official.xception.evaluate_saved_model --saved_model_dir=EXPORT/1700000000 \
        --data_dir=/data/imagenet-tfrecords [--blacklist_file=ILSVRC2014_clsloc_validation_blacklist.txt]
        [--per_class_csv=per_class.csv]

Images go through the `serving_default` signature as raw bytes, so the figures include the export's own
preprocessing; for the same checkpoint they equal the Estimator's evaluation. The blacklist (one
1-based validation image index per line, as in the ILSVRC2014 protocol) is matched against the index in
each record's `image/filename` (ILSVRC2012_val_00000001.JPEG -> 1).
"""

import csv
import json
import os
import re
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from data_prep.progress import ProgressReporter
from official.xception import export
from official.xception import input_pipeline
from official.xception import logging_setup
from official.xception.errors import PipelineError

_RECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
_VALIDATION_INDEX = re.compile(rb"(\d+)\.[A-Za-z]+$")


def read_blacklist(path):
    """The set of 1-based validation image indices in `path` (one per line; blank lines ignored)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError as error:
        raise PipelineError(f"--blacklist_file={path}: {error.strerror}") from None
    indices = set()
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        if not line.isdigit() or int(line) < 1:
            raise PipelineError(
                f"--blacklist_file={path}, line {number}: {line!r} is not a 1-based image index")
        indices.add(int(line))
    return indices


def _validation_index(filename):
    match = _VALIDATION_INDEX.search(filename)
    if match is None:
        raise PipelineError(
            f"a record's image/filename {filename.decode(errors='replace')!r} has no validation image "
            "index (ILSVRC2012_val_00000001.JPEG): --blacklist_file cannot be applied to these shards")
    return int(match.group(1))


def _count_records(data_dir, files):
    """The validation record count: from data_prep's build_summary.json, else (or for an incomplete
    set of shards) by reading the shards (at disk speed, a small fraction of the evaluation itself)."""
    try:
        if len(files) != input_pipeline.shard_set_size(files[0]):
            raise ValueError("the summary counts the whole set")
        with open(os.path.join(data_dir, "build_summary.json"), encoding="utf-8") as handle:
            return int(json.load(handle)["splits"]["validation"]["images_written"])
    except (OSError, KeyError, TypeError, ValueError):
        return int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda count, _: count + 1))


class _Tally:
    """Hits per class for top-1 and top-5."""

    def __init__(self, num_classes):
        self.examples = np.zeros(num_classes, np.int64)
        self.top_1 = np.zeros(num_classes, np.int64)
        self.top_5 = np.zeros(num_classes, np.int64)

    def add(self, labels, top_1_hits, top_5_hits):
        np.add.at(self.examples, labels, 1)
        np.add.at(self.top_1, labels, top_1_hits)
        np.add.at(self.top_5, labels, top_5_hits)


def evaluate(saved_model_dir, data_dir, *, batch_size=64, label_offset=None, blacklist=frozenset(),
             progress_interval=10.0, allow_incomplete_shards=False):
    """Evaluates the SavedModel on every validation record not in `blacklist` (of the shards present,
    with `allow_incomplete_shards`).

    Returns:
      dict with top_1, top_5, examples, excluded, and the per-class tally.
    """
    info = export.read_export_info(saved_model_dir)
    num_classes = info["num_classes"]
    if label_offset is None:
        label_offset = info["label_offset"]
    serve = tf.saved_model.load(saved_model_dir).signatures[export.SERVING_SIGNATURE]
    files = input_pipeline.list_input_files(data_dir, is_training=False,
                                            allow_incomplete_shards=allow_incomplete_shards)
    records = tf.data.TFRecordDataset(files).map(
        lambda record: tf.io.parse_single_example(record, _RECORD_FEATURES),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    records = records.batch(batch_size).prefetch(2)

    progress = ProgressReporter("evaluated", _count_records(data_dir, files), interval=progress_interval)
    tally = _Tally(num_classes)
    excluded = 0
    for batch in records.as_numpy_iterator():
        keep = np.ones(len(batch["image/class/label"]), bool)
        if blacklist:
            keep = np.array([_validation_index(name) not in blacklist for name in batch["image/filename"]])
        excluded += int((~keep).sum())
        progress.exclude(int((~keep).sum()))
        if not keep.any():
            continue
        labels = batch["image/class/label"][keep] - label_offset
        if labels.min() < 0 or labels.max() >= num_classes:
            bad = int(batch["image/class/label"][keep][(labels < 0) | (labels >= num_classes)][0])
            raise PipelineError(
                f"a record in {data_dir} has label {bad}, outside [{label_offset}, "
                f"{label_offset + num_classes}) for this {num_classes}-class export with "
                f"label offset {label_offset}: check --label_offset")
        logits = serve(image_bytes=tf.constant(batch["image/encoded"][keep]))["logits"]
        # The same ops as the Estimator's metrics, so that ties are broken the same way.
        tally.add(labels,
                  tf.math.in_top_k(tf.constant(labels), logits, 1).numpy(),
                  tf.math.in_top_k(tf.constant(labels), logits, min(5, num_classes)).numpy())
        progress.advance(int(keep.sum()))
    examples = int(tally.examples.sum())
    if examples == 0:
        raise PipelineError(f"no validation examples were evaluated in {data_dir}")
    return {
        "top_1": tally.top_1.sum() / examples,
        "top_5": tally.top_5.sum() / examples,
        "examples": examples,
        "excluded": excluded,
        "tally": tally,
    }


def write_per_class_csv(path, tally, class_names):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "synset", "text", "examples", "top_1", "top_5"])
        for index, (synset, text) in enumerate(class_names):
            count = tally.examples[index]
            writer.writerow([index, synset, text, count,
                             f"{tally.top_1[index] / count:.4f}" if count else "",
                             f"{tally.top_5[index] / count:.4f}" if count else ""])


def define_flags():
    flags.DEFINE_string("saved_model_dir", None, "An export of imagenet_main (a numbered version dir).")
    flags.DEFINE_string("data_dir", None, "Directory with the validation-*-of-* TFRecord shards.")
    flags.DEFINE_integer("batch_size", 64, "Images per call of the serving signature.")
    flags.DEFINE_integer("label_offset", None,
                         "Data label minus output index; default: what the export recorded.")
    flags.DEFINE_string("blacklist_file", None,
                        "1-based validation image indices to exclude, one per line (ILSVRC2014).")
    flags.DEFINE_string("per_class_csv", None, "Write per-class top-1/top-5 accuracy to this CSV.")
    flags.DEFINE_boolean("allow_incomplete_shards", False, "Evaluate the validation shards present "
                         "even when some of their set are missing.")
    flags.mark_flags_as_required(["saved_model_dir", "data_dir"])


def main(argv):
    del argv
    flag_values = flags.FLAGS
    logging_setup.log_through_absl_only()
    try:
        blacklist = read_blacklist(flag_values.blacklist_file) if flag_values.blacklist_file else set()
        result = evaluate(flag_values.saved_model_dir, flag_values.data_dir,
                          batch_size=flag_values.batch_size, label_offset=flag_values.label_offset,
                          blacklist=blacklist,
                          allow_incomplete_shards=flag_values.allow_incomplete_shards)
        if flag_values.per_class_csv:
            write_per_class_csv(flag_values.per_class_csv, result["tally"],
                                export.read_class_names(flag_values.saved_model_dir))
    except PipelineError as error:
        sys.exit(f"error: {error}")
    print(f"top_1_accuracy={result['top_1']:.4f} top_5_accuracy={result['top_5']:.4f} "
          f"examples={result['examples']} excluded_by_blacklist={result['excluded']}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
