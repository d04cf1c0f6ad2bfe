"""Finds the corrupt records of TFRecord shards: unreadable bytes (checksum mismatch, truncation),
records that do not parse as this pipeline's schema, and images that do not decode.

TensorFlow's errors for these name a byte offset but not the file, and a split has over a thousand
shards, so after such an error imagenet_main and evaluate_saved_model scan the split with
first_bad_record() to name the shard and the record; verify_shards scans everything with progress.
Records are checked exactly as the input pipeline reads them (its parser, the evaluation decode).
"""

import concurrent.futures
import dataclasses
import json
import os
import re
import threading
from typing import List

import numpy as np
import tensorflow as tf

from official.utils import dataset_info
from official.utils import record_schema
from official.utils.errors import PipelineError
from official.utils.progress import ProgressReporter
from official.xception import input_pipeline
from official.xception import preprocessing
from official.xception import xception_model

SPLITS = {"train": True, "validation": False}  # split name -> is_training of list_input_files
# Messages of the parse and decode kernels on a record that is well-formed TFRecord but bad data.
_DATA_ERROR = re.compile(
    r"jpeg|png|gif|bmp|image file format|decode|Input is empty|Could not parse example input|"
    r"Key: image/|Feature: image/",
    re.IGNORECASE)
_KERNEL_NOISE = re.compile(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\]( name: \S*)?")


@dataclasses.dataclass(frozen=True)
class BadRecord:
    path: str
    index: int  # 0-based position of the record in its shard
    problem: str

    def line(self):
        return f"{self.path} record {self.index}: {self.problem}"


@dataclasses.dataclass
class ScanResult:
    shards: int = 0
    records: int = 0
    bad: List[BadRecord] = dataclasses.field(default_factory=list)


def is_data_error(error):
    """Whether a tf.errors.OpError raised while a dataset ran can come from a corrupt record."""
    if isinstance(error, tf.errors.DataLossError):
        return True
    return isinstance(error, tf.errors.InvalidArgumentError) and bool(_DATA_ERROR.search(error.message))


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decode(serialized):
    """A value of the pixels of a record that record_schema passed, decoded as evaluation does (the
    shape alone is static, and the decode would be optimised away)."""
    image_bytes, _, _ = input_pipeline.parse_record(serialized, 0, with_boxes=False)
    return tf.reduce_mean(preprocessing.preprocess_for_eval(image_bytes,
                                                            xception_model.MIN_IMAGE_SIZE))


def _count_if_clean(path, check_images, labels):
    """The shard's record count when every record passes, at tf.data speed (parallel, little Python
    per record); None when some record fails."""
    records = input_pipeline.checked_records(path, labels)
    if check_images:
        records = records.map(_decode, num_parallel_calls=tf.data.AUTOTUNE)
    try:
        return int(records.reduce(np.int64(0), lambda count, _: count + 1))
    except tf.errors.OpError:
        return None


def label_range(data_dir):
    """The labels build_summary.json lists (a record_schema.LabelRange), None without a summary (or
    with one that its readers refuse: that is their error to report, this checks the shards)."""
    try:
        info = dataset_info.read_dataset_info(data_dir)
    except PipelineError:
        info = None
    return None if info is None else record_schema.LabelRange(info.first_label, len(info.classes))


def _first_line(message):
    """The first line of a kernel's error message without TensorFlow's function and op names."""
    lines = [line.strip() for line in _KERNEL_NOISE.sub("", message).splitlines() if line.strip()]
    if lines and lines[0] == "Graph execution error:":
        lines = lines[-1:]  # the kernel's message comes after the stack of the failing node
    return lines[0] if lines else "unknown error"


def check_shard(path, check_images=True, expected_records=None, stop_at_first=False, labels=None):
    """(records read, [BadRecord]) of one shard: records that break record_schema (labels within
    `labels`, a LabelRange or None), images that do not decode, unreadable bytes.

    A TFRecord file cannot be resynchronised after unreadable bytes, so its first unreadable record
    ends the scan of that shard. A shard that fails the fast check is read again record by record to
    find what fails.
    """
    count = _count_if_clean(path, check_images, labels)
    if count is not None:
        return count, _count_mismatch(path, count, expected_records)
    bad, count = [], 0
    try:
        for record in tf.data.TFRecordDataset(path):
            problem = record_schema.record_problem(record.numpy(), labels)
            if problem is None and check_images:
                try:
                    _decode(record)
                except tf.errors.InvalidArgumentError as error:
                    problem = f"image does not decode ({_first_line(error.message)})"
            if problem is not None:
                bad.append(BadRecord(path, count, problem))
                if stop_at_first:
                    return count + 1, bad
            count += 1
    except tf.errors.DataLossError as error:
        bad.append(BadRecord(path, count, "unreadable bytes (checksum mismatch or truncated file: "
                                          f"{_first_line(error.message)}); the rest of the shard "
                                          "cannot be read"))
        return count, bad
    except tf.errors.OpError as error:
        bad.append(BadRecord(path, 0, f"cannot be read ({_first_line(error.message)})"))
        return 0, bad
    return count, bad + _count_mismatch(path, count, expected_records)


def _count_mismatch(path, count, expected_records):
    if expected_records is None or count == expected_records:
        return []
    return [BadRecord(path, count, f"holds {count} records, build_summary.json says "
                                   f"{expected_records} (truncated at a record boundary?)")]


def _expected_records(data_dir):
    """{shard file name: record count} from data_prep's build_summary.json ({} without one)."""
    try:
        with open(os.path.join(data_dir, "build_summary.json"), encoding="utf-8") as handle:
            shards = json.load(handle).get("shards") or {}
        return {name: int(entry["records"]) for name, entry in shards.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def present_splits(data_dir):
    """The splits with at least one file matching their pattern in `data_dir`."""
    patterns = {True: input_pipeline.TRAIN_PATTERN, False: input_pipeline.VALIDATION_PATTERN}
    return tuple(split for split, is_training in SPLITS.items()
                 if tf.io.gfile.glob(os.path.join(data_dir, patterns[is_training])))


def split_files(data_dir, splits):
    return [path for split in splits
            for path in input_pipeline.list_input_files(data_dir, SPLITS[split])]


def scan_shards(data_dir, splits=tuple(SPLITS), check_images=True, num_threads=None,
                progress_interval=10.0, stop_at_first=False, stream=None):
    """Checks every record of the splits' shards in `data_dir`, shards in parallel threads (the
    kernels release the GIL), printing progress (shards, rate, ETA).

    Returns:
      ScanResult; with `stop_at_first`, the scan ends at the first bad record found.
    """
    files = split_files(data_dir, splits)
    expected = _expected_records(data_dir)
    labels = label_range(data_dir)
    result = ScanResult()
    progress = ProgressReporter("verified", len(files), unit="shards", interval=progress_interval,
                                stream=stream)
    stop = threading.Event()

    def scan(path):
        if stop.is_set():
            return 0, []
        return check_shard(path, check_images, expected.get(os.path.basename(path)), stop_at_first,
                           labels)

    workers = num_threads or min(32, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for records, bad in pool.map(scan, files):
            result.shards += 1
            result.records += records
            result.bad.extend(bad)
            progress.advance(1)
            if bad and stop_at_first:
                stop.set()
                break
    return result


def _failing_split(error):
    """'validation' when the error was raised inside Estimator.evaluate (or evaluate_saved_model)."""
    frames = []
    traceback = error.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame.f_code.co_name)
        traceback = traceback.tb_next
    return "validation" if any("evaluate" in name for name in frames) else "train"


def explain_data_error(error, data_dir, flag="--data_dir", splits=None):
    """A one-line PipelineError message for a corrupt-data `error`, naming the bad shard and record
    found by scanning the split(s) it can come from (the likely one first); None when the scan finds
    nothing and the error is not a DataLossError (then it is likely not the data's fault)."""
    if splits is None:
        present = present_splits(data_dir)
        splits = tuple(dict.fromkeys(split for split in (_failing_split(error), *SPLITS)
                                     if split in present))
    # Unreadable bytes are found at disk speed; only a decode error needs every image decoded.
    check_images = not isinstance(error, tf.errors.DataLossError)
    for split in splits:
        found = scan_shards(data_dir, (split,), check_images=check_images, stop_at_first=True).bad
        if found:
            return (f"corrupt data in {flag}: {found[0].line()}; list every bad shard with "
                    f"python -m official.xception.verify_shards --data_dir={data_dir}, then re-run "
                    "the data_prep build command (it rewrites shards whose checksum no longer "
                    "matches) or copy the shards again, or pass --skip_corrupt_records to leave bad "
                    "records out")
    if not isinstance(error, tf.errors.DataLossError):
        return None
    return (f"corrupt data in {flag} ({_first_line(error.message)}), but a scan of its "
            f"{' and '.join(splits)} shards found no bad record: is the storage failing? Run "
            f"python -m official.xception.verify_shards --data_dir={data_dir}")


def locate_or_raise(error, data_dir, flag="--data_dir", splits=None):
    """Raises PipelineError for a corrupt-data OpError or an unreadable shard; returns for any other
    error."""
    message = explain_data_error(error, data_dir, flag, splits) if is_data_error(error) else None
    if message:
        raise PipelineError(message) from None
    if (isinstance(error, (tf.errors.PermissionDeniedError, tf.errors.NotFoundError,
                           tf.errors.FailedPreconditionError))
            and os.path.normpath(data_dir) in error.message):
        raise PipelineError(f"cannot read {flag}={data_dir}: {_first_line(error.message)}") from None

