r"""Describes TFRecord shards built by other tools (tensorflow/models' build_imagenet_data.py, the TPU
and official readers' converters) in the build_summary.json that data_prep writes beside its own.

    python -m data_prep.describe_shards --data_dir=/data/imagenet-tfrecords

Reads every record of the train-*-of-* and validation-*-of-* shards once (the image bytes are read but
not decoded) and writes the class list (label, image/class/synset, image/class/text), the label range
and the counts per split and class. imagenet_main then takes the class count, label convention and
split sizes from it, and the export names its classes, as with data_prep's own shards.
"""

import collections
import json
import os
import sys

from absl import app
from absl import flags

# Our one-line errors say what went wrong; TensorFlow's C++ log would only repeat it noisily.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402 (must follow the log level)

from official.utils import record_schema  # noqa: E402
from official.utils.errors import PipelineError  # noqa: E402
from official.utils.progress import ProgressReporter  # noqa: E402

SUMMARY_NAME = "build_summary.json"
# Marks a summary written here, so that readers know the shards were not built by data_prep.
BUILT_BY = "describe_shards"
SPLITS = ("train", "validation")
_SHARD_NAME = record_schema.SHARD_NAME
_READ_BUFFER_BYTES = 8 * 1024 * 1024

def list_shards(data_dir):
    """{split: sorted shard paths} of the splits present in `data_dir`."""
    try:
        names = tf.io.gfile.listdir(data_dir)
    except tf.errors.NotFoundError:
        raise PipelineError(f"--data_dir {data_dir} does not exist") from None
    shards, totals = collections.defaultdict(list), collections.defaultdict(set)
    for name in sorted(names):
        match = _SHARD_NAME.match(name)
        if match:
            record_schema.check_regular_file(os.path.join(data_dir, name))
            shards[match.group(1)].append(os.path.join(data_dir, name))
            totals[match.group(1)].add(int(match.group(3)))
    for split, split_totals in totals.items():
        if len(split_totals) > 1:
            raise PipelineError(f"--data_dir {data_dir} holds {split} shards of sets of different sizes "
                                f"({', '.join(map(str, sorted(split_totals)))}): keep one set")
    if not shards:
        raise PipelineError(f"--data_dir {data_dir} holds no train-*-of-* or validation-*-of-* shards: "
                            "point it at the directory of TFRecord shards")
    return dict(shards)


def _shard_total(path):
    return int(_SHARD_NAME.match(os.path.basename(path)).group(3))


def _read_shard(path):
    """{(label, synset, text): records} over the records of one shard, each checked by the rule every
    reader applies (record_schema)."""
    counts = collections.Counter()
    index = 0
    try:
        for record in tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES).as_numpy_iterator():
            problem = record_schema.record_problem(record)
            if problem:
                raise PipelineError(f"{path} record {index}: {problem}; rebuild or copy the shard "
                                    "again, or leave it out")
            example, _ = record_schema.parse(record)
            counts[(example.features.feature[record_schema.LABEL_KEY].int64_list.value[0],
                    record_schema.single_bytes(example, record_schema.SYNSET_KEY),
                    record_schema.single_bytes(example, record_schema.TEXT_KEY))] += 1
            index += 1
    except tf.errors.OpError as error:
        raise PipelineError(f"{path} is truncated or corrupt from record {index} on (not a readable "
                            f"TFRecord file: {type(error).__name__}); copy it again or leave it out") from None
    return {(label, synset.decode("utf-8", "replace"), text.decode("utf-8", "replace")): count
            for (label, synset, text), count in counts.items()}


def _class_table(per_shard_counts):
    """{label: (name, text)} from the records, checking that labels and synsets match one to one."""
    classes, label_of_name = {}, {}
    for path, counts in per_shard_counts.items():
        for label, name, text in counts:
            name = name or f"label_{label}"  # records without a synset still get a stable name
            if classes.setdefault(label, (name, text or name))[0] != name:
                raise PipelineError(f"{path}: label {label} is {name!r} there but "
                                    f"{classes[label][0]!r} elsewhere; the shards mix label "
                                    "conventions (were they built with different class lists?)")
            if label_of_name.setdefault(name, label) != label:
                raise PipelineError(f"{path}: class {name!r} has label {label} there but "
                                    f"{label_of_name[name]} elsewhere; the shards mix label conventions "
                                    "(were they built with different class lists?)")
    return classes


def _first_label(classes):
    """1 for the established labels 1..N (0 is background), 0 for 0..N-1; the labels must be dense."""
    labels = sorted(classes)
    if labels[0] < 0:
        raise PipelineError(f"the records have a negative label ({labels[0]}); labels must be 0..N-1 "
                            "or 1..N")
    first = 0 if labels[0] == 0 else 1
    missing = sorted(set(range(first, labels[-1] + 1)) - set(labels))
    if missing:
        raise PipelineError(
            f"no record has label {missing[0]} ({len(missing)} labels of {first}..{labels[-1]} have "
            "no record), so the class count cannot be known from these shards: describe the complete "
            "set of shards")
    return first


def describe(data_dir, log=None, progress_interval=10.0):
    """Reads every shard of `data_dir` once; returns the build_summary.json content for them."""
    log = log if log is not None else sys.stderr
    shards = list_shards(data_dir)
    all_paths = [path for split in SPLITS for path in shards.get(split, ())]
    progress = ProgressReporter("describe", len(all_paths), unit="shards", interval=progress_interval,
                                stream=log)
    per_shard_counts, records = {}, {}
    for path in all_paths:
        per_shard_counts[path] = _read_shard(path)
        records[path] = sum(per_shard_counts[path].values())
        progress.advance(1)
    classes = _class_table(per_shard_counts)
    if not classes:
        raise PipelineError(f"the shards in --data_dir {data_dir} hold no records")
    first_label = _first_label(classes)
    splits = {}
    for split, paths in shards.items():
        per_class = collections.Counter()
        for path in paths:
            for (label, _, _), count in per_shard_counts[path].items():
                per_class[label] += count
        splits[split] = {
            "num_shards": _shard_total(paths[0]),
            "shards_done": len(paths),
            "images_found": sum(per_class.values()),
            "images_written": sum(per_class.values()),
            "classes": {classes[label][0]: {"label": label, "text": classes[label][1],
                                            "images_found": per_class[label]}
                        for label in sorted(per_class)},
        }
    last_label = max(classes)
    return {
        "status": "complete",
        "built_by": BUILT_BY,
        "first_label": first_label,
        "classes": [{"label": label, "name": classes[label][0], "text": classes[label][1]}
                    for label in sorted(classes)],
        "settings": {"first_label": first_label, "label_range": [first_label, last_label],
                     "output_directory": data_dir},
        "splits": splits,
        "shards": {os.path.basename(path): {"records": records[path],
                                            "bytes": tf.io.gfile.stat(path).length}
                   for path in all_paths},
    }


def _summary_path(data_dir, overwrite):
    path = os.path.join(data_dir, SUMMARY_NAME)
    if not overwrite and tf.io.gfile.exists(path):
        raise PipelineError(f"{path} exists already; pass --overwrite to replace it")
    return path


def write_summary(data_dir, summary, overwrite=False):
    """Writes `summary` as data_dir/build_summary.json through a temporary file and a rename."""
    path = _summary_path(data_dir, overwrite)
    temporary = path + ".incomplete"
    try:
        with tf.io.gfile.GFile(temporary, "w") as output:
            output.write(json.dumps(summary, indent=1, ensure_ascii=False))
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except (tf.errors.OpError, OSError) as error:
        # A partial temporary file is of no use to anyone (a later run writes it anew).
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
        raise PipelineError(f"cannot write {path}: {getattr(error, 'message', error)}") from None
    return path


def describe_and_write(data_dir, overwrite=False, log=None, progress_interval=10.0):
    """describe() then write_summary(); refuses before reading anything when the summary exists."""
    log = log if log is not None else sys.stderr
    path = _summary_path(data_dir, overwrite)
    summary = describe(data_dir, log, progress_interval)
    write_summary(data_dir, summary, overwrite)
    counts = ", ".join(f"{split} {entry['images_written']:,} images in {entry['shards_done']:,} shards"
                       for split, entry in summary["splits"].items())
    first, last = summary["settings"]["label_range"]
    log.write(f"wrote {path}: {len(summary['classes']):,} classes (labels {first}..{last}), {counts}\n")
    return summary


def define_flags():
    flags.DEFINE_string("data_dir", None, "Directory of train-*-of-* / validation-*-of-* TFRecord "
                        "shards; build_summary.json is written there.")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing build_summary.json.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS.data_dir:
        raise app.UsageError("--data_dir is required")
    try:
        describe_and_write(flags.FLAGS.data_dir, overwrite=flags.FLAGS.overwrite)
    except PipelineError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
