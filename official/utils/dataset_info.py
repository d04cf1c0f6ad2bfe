"""What the shards' build_summary.json (written by data_prep, or by data_prep.describe_shards for
shards of other tools) says about a dataset, and the class list that travels from the data to the
checkpoints to the export.

Output index i of the network is the class whose record label is i + label_offset. With the
established labels 1..N (first_label 1), label_offset 1 gives N outputs, label_offset 0 gives N + 1
outputs whose index 0 is the background class.
"""

import csv
import dataclasses
import json
import os
from typing import Optional, Tuple

import tensorflow as tf

from official.utils.errors import PipelineError

SUMMARY_NAME = "build_summary.json"
# Summaries without a "built_by" key are data_prep's; data_prep.describe_shards marks its own.
BUILT_BY_DATA_PREP = "data_prep"
DESCRIBE_SHARDS_COMMAND = "python -m data_prep.describe_shards --data_dir="
CLASSES_FILE = "classes.tsv"
BACKGROUND = ("background", "background")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """The facts of one build_summary.json."""

    first_label: int
    classes: Tuple[Tuple[int, str, str], ...]  # (label, name, text) in label order
    train_examples: Optional[int]
    eval_examples: Optional[int]
    built_by: str = BUILT_BY_DATA_PREP  # or "describe_shards" for shards built by other tools

    def num_outputs(self, label_offset):
        """Outputs a network needs for these labels with `label_offset`."""
        return self.first_label + len(self.classes) - label_offset

    def class_names(self, label_offset, num_outputs):
        """[(name, text)] for every output index."""
        by_label = {label: (name, text) for label, name, text in self.classes}
        names = []
        for index in range(num_outputs):
            label = index + label_offset
            if label in by_label:
                names.append(by_label[label])
            elif label == 0 and self.first_label == 1:
                names.append(BACKGROUND)
            else:
                raise PipelineError(
                    f"output {index} stands for label {label} (--label_offset={label_offset}), which "
                    f"the data does not have (labels {self.first_label}.."
                    f"{self.first_label + len(self.classes) - 1}): check --num_classes and --label_offset")
        return names


def _split_count(path, summary, split):
    """splits.<split>.images_written (docs/DESIGN.md §5), None when the split is not in the summary."""
    entry = summary["splits"].get(split)
    if entry is None:
        return None
    count = entry.get("images_written") if isinstance(entry, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise PipelineError(f"{path}: splits.{split}.images_written is {count!r}, not a record count: "
                            "rebuild the shards or re-run " + DESCRIBE_SHARDS_COMMAND.rstrip("=")
                            + " (or remove the summary)")
    return count


def _check_classes(path, first_label, rows):
    """first_label 0 or 1, classes with distinct names and the labels first_label, first_label+1, ..."""
    if first_label not in (0, 1):
        raise PipelineError(f"{path}: settings.first_label is {first_label}, not 0 or 1: rebuild the "
                            "shards or remove the summary")
    if not rows:
        raise PipelineError(f"{path}: classes lists no class: rebuild the shards or remove the summary")
    names = [name for _, name, _ in rows]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise PipelineError(f"{path}: classes names {duplicate!r} more than once: rebuild the shards "
                            "or remove the summary")
    labels = [label for label, _, _ in rows]
    if labels != list(range(first_label, first_label + len(rows))):
        raise PipelineError(f"{path}: classes have labels {labels[0]}..{labels[-1]} ({len(rows)} "
                            f"classes), not {first_label}..{first_label + len(rows) - 1} as "
                            "settings.first_label says: rebuild the shards or remove the summary")


def read_dataset_info(data_dir):
    """The DatasetInfo of `data_dir`'s build_summary.json (written by data_prep, or by
    data_prep.describe_shards for shards of other tools), or None when there is none."""
    path = os.path.join(data_dir, SUMMARY_NAME)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as handle:
            summary = json.load(handle)
        first_label = int(summary["settings"]["first_label"])
        built_by = str(summary.get("built_by", BUILT_BY_DATA_PREP))
        classes = summary.get("classes")
        if classes is not None:
            rows = [(int(c["label"]), str(c["name"]), str(c.get("text") or c["name"])) for c in classes]
        else:  # summaries that list classes per split only
            merged = {}
            for split in summary["splits"].values():
                for name, entry in split["classes"].items():
                    merged[name] = (int(entry["label"]), name, entry.get("text") or name)
            rows = list(merged.values())
        rows = sorted(rows)
        counts = {split: _split_count(path, summary, split) for split in ("train", "validation")}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PipelineError(f"{path} is not a data_prep build summary ({error!r}); remove it or "
                            "rebuild the shards") from None
    _check_classes(path, first_label, rows)
    return DatasetInfo(first_label=first_label, classes=tuple(rows),
                       train_examples=counts["train"], eval_examples=counts["validation"],
                       built_by=built_by)


def write_class_names(directory, names):
    """Writes `names` ([(name, text)] per output index) as directory/classes.tsv."""
    tf.io.gfile.makedirs(directory)
    temporary = os.path.join(directory, CLASSES_FILE + ".tmp")
    with tf.io.gfile.GFile(temporary, "w") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "name", "text"])
        writer.writerows([index, name, text] for index, (name, text) in enumerate(names))
    tf.io.gfile.rename(temporary, os.path.join(directory, CLASSES_FILE), overwrite=True)


def read_class_names(directory):
    """[(name, text)] from directory/classes.tsv, or None when there is none."""
    path = os.path.join(directory, CLASSES_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    return [(name, text) for _, name, text in rows]
