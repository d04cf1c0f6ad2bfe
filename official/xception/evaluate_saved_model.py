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
import os
import re
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from official.utils import dataset_info
from official.utils import flags_core
from official.utils import logging_setup
from official.utils import record_schema
from official.utils import run_safety
from official.utils.errors import PipelineError
from official.utils.progress import ProgressReporter
from official.xception import export
from official.xception import exported_model
from official.xception import input_pipeline
from official.xception import run_record
from official.xception import shard_check

_RECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
_VALIDATION_INDEX = re.compile(rb"(\d+)\.[A-Za-z]+$")


def read_blacklist(path):
    """The set of 1-based validation image indices in `path` (one per line; blank lines ignored)."""
    try:
        # utf-8-sig: editors on Windows start the file with a byte-order mark.
        with open(path, encoding="utf-8-sig") as handle:
            lines = [line.strip() for line in handle]
    except OSError as error:
        raise PipelineError(f"--blacklist_file={path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise PipelineError(f"--blacklist_file={path} is not a text file: give the ILSVRC2014 "
                            "blacklist, one image index per line") from None
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


def _read_records(files, skip_corrupt_records, labels=None, label_hint=""):
    """The records that pass record_schema, one reader per file (records are named by shard, and
    skipped unreadable bytes end one file, not all)."""
    return tf.data.Dataset.from_tensor_slices(files).flat_map(
        lambda path: input_pipeline.checked_records(path, labels, skip_corrupt_records, label_hint))


def _count_records(data_dir, files, skip_corrupt_records):
    """The validation record count: from data_prep's build_summary.json, else (or for an incomplete
    set of shards) by reading the shards (at disk speed, a small fraction of the evaluation itself)."""
    if len(files) == input_pipeline.shard_set_size(files[0]):  # the summary counts the whole set
        info = dataset_info.read_dataset_info(data_dir)
        if info is not None and info.eval_examples is not None:
            return info.eval_examples
    records = _read_records(files, skip_corrupt_records)
    return int(records.reduce(np.int64(0), lambda count, _: count + 1))


def _serve_skipping_corrupt(serve, images):
    """(logits of the images that decode, mask of those images): one call per image."""
    logits, decoded = [], []
    for image in images:
        try:
            logits.append(serve(image_bytes=tf.constant([image]))["logits"][0])
            decoded.append(True)
        except tf.errors.InvalidArgumentError:
            decoded.append(False)
    return tf.stack(logits) if logits else None, np.array(decoded)


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
             progress_interval=10.0, allow_incomplete_shards=False, skip_corrupt_records=False):
    """Evaluates the SavedModel on every validation record not in `blacklist` (of the shards present,
    with `allow_incomplete_shards`).

    With `skip_corrupt_records`, records whose bytes do not read or whose image does not decode are
    left out and counted (exactly for images; for unreadable bytes, as the records missing from the
    count in build_summary.json).

    Returns:
      dict with top_1, top_5, examples, excluded, skipped_corrupt, the per-class tally and the
      provenance summary of the export (lines).
    """
    if batch_size < 1:
        raise PipelineError(f"--batch_size={batch_size}: must be at least 1")
    opened = exported_model.open_export(saved_model_dir)
    num_classes = opened.info["num_classes"]
    if label_offset is None:
        label_offset = opened.info["label_offset"]
    files = input_pipeline.list_input_files(data_dir, is_training=False,
                                            allow_incomplete_shards=allow_incomplete_shards)
    try:
        result = _evaluate_records(opened.serve, data_dir, files, num_classes, label_offset,
                                   batch_size, blacklist, progress_interval, skip_corrupt_records)
    except tf.errors.OpError as error:
        message = input_pipeline.data_error_message(error)
        if message:
            raise PipelineError(f"bad record in --data_dir: {message}") from None
        shard_check.locate_or_raise(error, data_dir, splits=("validation",))
        raise
    result["provenance"] = run_record.export_summary(opened.info, opened.provenance)
    return result


def _evaluate_records(serve, data_dir, files, num_classes, label_offset, batch_size, blacklist,
                      progress_interval, skip_corrupt_records):
    hint = (f" of this {num_classes}-class export with label offset {label_offset} (labels "
            f"{label_offset}..{label_offset + num_classes - 1}): check --label_offset")
    records = _read_records(files, skip_corrupt_records,
                            record_schema.LabelRange(label_offset, num_classes), hint).map(
        lambda record: tf.io.parse_single_example(record, _RECORD_FEATURES),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    records = records.batch(batch_size).prefetch(2)

    total = _count_records(data_dir, files, skip_corrupt_records)
    progress = ProgressReporter("evaluated", total, interval=progress_interval)
    tally = _Tally(num_classes)
    excluded = read = undecodable = 0
    for batch in records.as_numpy_iterator():
        read += len(batch["image/class/label"])
        keep = np.ones(len(batch["image/class/label"]), bool)
        if blacklist:
            keep = np.array([_validation_index(name) not in blacklist for name in batch["image/filename"]])
        excluded += int((~keep).sum())
        progress.exclude(int((~keep).sum()))
        if not keep.any():
            continue
        labels = batch["image/class/label"][keep] - label_offset
        try:
            logits = serve(image_bytes=tf.constant(batch["image/encoded"][keep]))["logits"]
        except tf.errors.InvalidArgumentError:
            if not skip_corrupt_records:
                raise
            logits, decoded = _serve_skipping_corrupt(serve, batch["image/encoded"][keep])
            undecodable += int((~decoded).sum())
            progress.exclude(int((~decoded).sum()))
            labels = labels[decoded]
            if logits is None:
                continue
        # The same ops as the Estimator's metrics, so that ties are broken the same way.
        tally.add(labels,
                  tf.math.in_top_k(tf.constant(labels), logits, 1).numpy(),
                  tf.math.in_top_k(tf.constant(labels), logits, min(5, num_classes)).numpy())
        progress.advance(len(labels))
    examples = int(tally.examples.sum())
    if examples == 0:
        raise PipelineError(f"no validation examples were evaluated in {data_dir}")
    return {
        "top_1": tally.top_1.sum() / examples,
        "top_5": tally.top_5.sum() / examples,
        "examples": examples,
        "excluded": excluded,
        "skipped_corrupt": undecodable + max(0, total - read),
        "tally": tally,
    }


def write_per_class_csv(path, tally, class_names):
    """Writes the CSV through a temporary file, so that a failed write leaves `path` as it was."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "synset", "text", "examples", "top_1", "top_5"])
            for index, (synset, text) in enumerate(class_names):
                count = tally.examples[index]
                writer.writerow([index, synset, text, count,
                                 f"{tally.top_1[index] / count:.4f}" if count else "",
                                 f"{tally.top_5[index] / count:.4f}" if count else ""])
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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
    flags.DEFINE_boolean("skip_corrupt_records", False, "Leave out (and count) records whose bytes "
                         "do not read or whose image does not decode, instead of stopping.")
    flags.mark_flags_as_required(["saved_model_dir", "data_dir"])
    flags_core.set_ranges({"batch_size": flags_core.AT_LEAST_1, "label_offset": flags_core.AT_LEAST_0})


def main(argv):
    del argv
    flag_values = flags.FLAGS
    logging_setup.log_through_absl_only()
    try:
        problem = flags_core.check_numeric_flags(flag_values)
        if problem:
            raise PipelineError(problem)
        if flag_values.per_class_csv:
            run_safety.writable_file(flag_values.per_class_csv, "--per_class_csv")
        blacklist = read_blacklist(flag_values.blacklist_file) if flag_values.blacklist_file else set()
        result = evaluate(flag_values.saved_model_dir, flag_values.data_dir,
                          batch_size=flag_values.batch_size, label_offset=flag_values.label_offset,
                          blacklist=blacklist, skip_corrupt_records=flag_values.skip_corrupt_records,
                          allow_incomplete_shards=flag_values.allow_incomplete_shards)
    except PipelineError as error:
        sys.exit(f"error: {error}")
    print("\n".join(result["provenance"]))
    # Printed before anything else can fail: the figures cost a whole evaluation; the last line.
    print(f"top_1_accuracy={result['top_1']:.4f} top_5_accuracy={result['top_5']:.4f} "
          f"examples={result['examples']} excluded_by_blacklist={result['excluded']}"
          + (f" skipped_corrupt={result['skipped_corrupt']}"
             if flag_values.skip_corrupt_records else ""), flush=True)
    if flag_values.per_class_csv:
        try:
            write_per_class_csv(flag_values.per_class_csv, result["tally"],
                                export.read_class_names(flag_values.saved_model_dir))
        except OSError as error:
            sys.exit(f"error: --per_class_csv={flag_values.per_class_csv}: {error.strerror}; the "
                     "figures are above")


if __name__ == "__main__":
    define_flags()
    app.run(main)
