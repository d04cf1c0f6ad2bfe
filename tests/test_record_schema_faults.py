"""Every reader applies one rule to every record (official/utils/record_schema): a record that breaks
the schema of docs/DESIGN.md §3.2 is one line naming its shard and index in training, verify_shards
(with and without image checks) and describe_shards; verify_shards flags exactly what training
rejects; summaries, shard names and numbers that cannot be right are refused before any work."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_prep import describe_shards
from official.utils import dataset_info
from official.utils import record_schema
from official.utils.errors import PipelineError
from official.xception import input_pipeline
from official.xception import shard_check
from tests import fault_fixtures
from tests import process_fixtures
from tests import record_fixtures

NUM_CLASSES = 3  # labels 1..3
BAD_INDEX = 2
_RNG = np.random.default_rng(0)
_JPEG = record_fixtures.encode_image(record_fixtures.random_photo(_RNG, 40, 48))


def _example(**features):
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _good(label=1, boxes=()):
    return record_fixtures.make_example(_JPEG, label, 40, 48, bboxes=boxes)


def _bytes(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(*values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(*values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _ragged_boxes():
    example = tf.train.Example.FromString(_good(boxes=[(0.1, 0.1, 0.9, 0.9)]))
    example.features.feature["image/object/bbox/xmax"].float_list.value.append(0.5)
    return example.SerializeToString()


# name -> (serialized record, the problem every reader reports).
MALFORMED = {
    "raw_jpeg": (_JPEG, "not a tf.train.Example (the bytes do not parse as one)"),
    "no_label": (_example(**{"image/encoded": _bytes(_JPEG)}),
                 "image/class/label holds 0 values, the schema says exactly 1"),
    "two_images": (_example(**{"image/encoded": _bytes(_JPEG, _JPEG), "image/class/label": _ints(1)}),
                   "image/encoded holds 2 values, the schema says exactly 1"),
    "float_label": (_example(**{"image/encoded": _bytes(_JPEG), "image/class/label": _floats(1.0)}),
                    "image/class/label holds a float list, the schema says int64"),
    "label_99": (_good(label=99), "image/class/label 99 is outside the labels 1..3"),
    "label_minus_1": (_good(label=-1), "image/class/label -1 is outside the labels 1..3"),
    "label_0": (_good(label=0), "image/class/label 0 is outside the labels 1..3"),
    "ragged_boxes": (_ragged_boxes(), "bounding boxes have edge lists of different lengths "
                                      "(ymin 1, xmin 1, ymax 1, xmax 2)"),
    "two_synsets": (_example(**{"image/encoded": _bytes(_JPEG), "image/class/label": _ints(1),
                                "image/class/synset": _bytes(b"a", b"b")}),
                    "image/class/synset holds 2 values, the schema says at most 1"),
}


def _summary(first_label=1, num_classes=NUM_CLASSES, **overrides):
    classes = [{"label": first_label + index, "name": f"n{index:08d}", "text": f"class {index}"}
               for index in range(num_classes)]
    summary = {"status": "complete", "first_label": first_label, "classes": classes,
               "settings": {"first_label": first_label},
               "splits": {"train": {"images_written": 6, "classes": {}}}}
    summary.update(overrides)
    return summary


def _data_dir(directory, bad_record, split="train"):
    """Two shards of three records each; record BAD_INDEX of shard 0 is `bad_record`."""
    records = [_good(label=1 + index % NUM_CLASSES) for index in range(6)]
    records[2 * BAD_INDEX] = bad_record  # round-robin: even records go to shard 0
    paths = record_fixtures.write_shards(str(directory), split, records, 2)
    (directory / dataset_info.SUMMARY_NAME).write_text(json.dumps(_summary()))
    return paths[0]


def _training_error(data_dir, batch_size=6):
    """data_error_message of the first batch of training (None when it reads)."""
    dataset = input_pipeline.input_fn(True, str(data_dir), batch_size, image_size=71,
                                      num_classes=NUM_CLASSES, label_offset=1, shuffle_buffer=8)
    try:
        next(iter(dataset))
    except tf.errors.InvalidArgumentError as error:
        return input_pipeline.data_error_message(error) or error.message.splitlines()[0]
    return None


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_reader_names_the_shard_and_record(tmp_path, case):
    record, problem = MALFORMED[case]
    shard = _data_dir(tmp_path, record)
    before = fault_fixtures.snapshot(tmp_path)
    assert record_schema.record_problem(record, record_schema.LabelRange(1, NUM_CLASSES)) == problem
    # Training: the first batch holds every record (6 of 6), the bad one among them.
    assert _training_error(tmp_path).startswith(f"{shard} record {BAD_INDEX}: {problem}")
    for check_images in (False, True):
        bad = shard_check.scan_shards(str(tmp_path), ("train",), check_images=check_images,
                                      progress_interval=1e9).bad
        assert [line.line() for line in bad] == [f"{shard} record {BAD_INDEX}: {problem}"]
    if not case.startswith("label"):  # describe_shards learns the label range from the records
        with pytest.raises(PipelineError, match=f"^{shard} record {BAD_INDEX}: ") as raised:
            describe_shards.describe(str(tmp_path), log=open(os.devnull, "w"))
        assert problem in str(raised.value)
    assert fault_fixtures.snapshot(tmp_path) == before


def test_skip_corrupt_records_counts_and_skips_schema_breaks_but_not_labels(tmp_path):
    _data_dir(tmp_path, MALFORMED["raw_jpeg"][0], "validation")
    before = input_pipeline.skipped_image_count()
    dataset = input_pipeline.input_fn(False, str(tmp_path), 8, image_size=71,
                                      num_classes=NUM_CLASSES, skip_corrupt_records=True)
    labels = np.concatenate([labels for _, labels in dataset.as_numpy_iterator()])
    assert len(labels) == 5 and input_pipeline.skipped_image_count() == before + 1
    shard = _data_dir(tmp_path, MALFORMED["label_99"][0], "validation")
    dataset = input_pipeline.input_fn(False, str(tmp_path), 8, image_size=71,
                                      num_classes=NUM_CLASSES, skip_corrupt_records=True)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(dataset)
    assert input_pipeline.data_error_message(raised.value).startswith(f"{shard} record {BAD_INDEX}: ")


def _mutations(rng):
    """Random records: good ones and ones broken in every way the schema can be."""
    choice = rng.integers(0, 8)
    label = int(rng.integers(-2, NUM_CLASSES + 3))
    edges = [sorted(rng.uniform(0, 1, 2)) for _ in range(rng.integers(0, 3))]
    boxes = [(low, low, high, high) for low, high in edges]
    if choice == 0:
        return _good(label, boxes)
    if choice == 1:
        return _JPEG[:int(rng.integers(1, len(_JPEG)))]
    if choice == 2:
        example = tf.train.Example.FromString(_good(label, boxes))
        key = "image/object/bbox/" + ("ymin", "xmin", "ymax", "xmax")[rng.integers(0, 4)]
        example.features.feature[key].float_list.value.extend(rng.uniform(0, 1, rng.integers(1, 3)))
        return example.SerializeToString()
    if choice == 3:
        example = tf.train.Example.FromString(_good(label, boxes))
        del example.features.feature[("image/encoded", "image/class/label")[rng.integers(0, 2)]]
        return example.SerializeToString()
    if choice == 4:
        return _example(**{"image/encoded": _bytes(_JPEG), "image/class/label": _ints(label, label)})
    if choice == 5:
        return _example(**{"image/encoded": _bytes(_JPEG), "image/class/label": _bytes(b"1")})
    if choice == 6:  # an image that does not decode, under a valid checksum
        return record_fixtures.make_example(_JPEG[:3] + bytes(197) + _JPEG[200:], label, 40, 48)
    return bytes(rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8))


def test_verify_shards_flags_exactly_what_training_rejects(tmp_path):
    rng = np.random.default_rng(18)
    records = [_mutations(rng) for _ in range(30)]
    record_fixtures.write_shards(str(tmp_path / "all"), "train", records, 1)
    (tmp_path / "all" / dataset_info.SUMMARY_NAME).write_text(json.dumps(_summary()))
    flagged = {bad.index for bad in shard_check.scan_shards(
        str(tmp_path / "all"), ("train",), check_images=True, progress_interval=1e9).bad}
    assert 0 < len(flagged) < len(records)
    rejected = set()
    for index, record in enumerate(records):
        directory = tmp_path / str(index)
        record_fixtures.write_shards(str(directory), "train", [record], 1)
        (directory / dataset_info.SUMMARY_NAME).write_text(json.dumps(_summary()))
        if _training_error(directory, batch_size=1) is not None:
            rejected.add(index)
    assert flagged == rejected


@pytest.mark.parametrize("make", [os.mkdir, os.mkfifo], ids=["directory", "fifo"])
def test_only_regular_files_are_shards(tmp_path, make):
    record_fixtures.write_shards(str(tmp_path), "train", [_good()], 2)
    path = str(tmp_path / "train-00001-of-00002")
    os.remove(path)
    make(path)
    kind = "a directory" if make is os.mkdir else "not a regular file"
    message = f"^{path} is named like a shard but is {kind}: move it out"
    with pytest.raises(PipelineError, match=message):
        input_pipeline.list_input_files(str(tmp_path), True)
    with pytest.raises(PipelineError, match=message):
        describe_shards.list_shards(str(tmp_path))


@pytest.mark.parametrize("overrides, message", [
    (dict(splits={"train": {"classes": {}}}), "splits.train.images_written is None, not a record count"),
    (dict(splits={"train": {"images_written": float("nan")}}),
     "splits.train.images_written is nan, not a record count"),
    (dict(splits={"train": {"images_written": 2.5}}), "splits.train.images_written is 2.5"),
    (dict(classes=[{"label": 1, "name": "a"}, {"label": 2, "name": "a"}]),
     "classes names 'a' more than once"),
    (dict(classes=[{"label": 1, "name": "a"}, {"label": 3, "name": "b"}]),
     r"classes have labels 1..3 \(2 classes\), not 1..2"),
    (dict(settings={"first_label": 2}), "settings.first_label is 2, not 0 or 1"),
    (dict(classes=[]), "classes lists no class"),
])
def test_a_summary_that_breaks_its_schema_is_one_line_naming_the_field(tmp_path, overrides, message):
    (tmp_path / dataset_info.SUMMARY_NAME).write_text(json.dumps(_summary(**overrides)))
    with pytest.raises(PipelineError, match=message) as raised:
        dataset_info.read_dataset_info(str(tmp_path))
    assert str(tmp_path) in str(raised.value) and "\n" not in str(raised.value)


# The exit path of each command, run as users run it: one line, status, nothing written.
COMMANDS = [
    ("official.xception.verify_shards", ("--nocheck_images",), 1,
     "error: 2 shards, 6 records read, 1 bad records in 1 shards"),
    ("data_prep.describe_shards", (), 1, "record 2: not a tf.train.Example"),
    ("official.xception.verify_shards", ("--num_threads=0",), 1,
     "error: --num_threads=0: must be an integer >= 1"),
]


@pytest.mark.parametrize("module, args, status, line", COMMANDS)
def test_commands_end_in_one_line(tmp_path, module, args, status, line):
    data_dir = tmp_path / "data"
    shard = _data_dir(data_dir, MALFORMED["raw_jpeg"][0])
    os.remove(data_dir / dataset_info.SUMMARY_NAME)  # describe_shards writes one
    before = fault_fixtures.snapshot(data_dir)
    finished = process_fixtures.run_module(module, f"--data_dir={data_dir}", *args, timeout=120)
    assert finished.returncode == status, finished.stderr[-2000:]
    errors = [text for text in finished.stderr.splitlines() if text.startswith("error: ")]
    assert len(errors) == 1 and line in errors[0], finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr + finished.stdout
    if module.endswith("verify_shards") and not args[0].startswith("--num_threads"):
        assert finished.stdout.startswith(f"{shard} record {BAD_INDEX}: not a tf.train.Example")
    assert fault_fixtures.snapshot(data_dir) == before



def test_describe_shards_on_a_full_disk_leaves_nothing_behind(tmp_path):
    records = [record_fixtures.make_example(_JPEG, label, 40, 48, synset=f"n{label:08d}")
               for label in (1, 2, 3)]
    record_fixtures.write_shards(str(tmp_path), "train", records, 1)
    before = fault_fixtures.snapshot(tmp_path)
    finished = process_fixtures.run_module("data_prep.describe_shards", f"--data_dir={tmp_path}",
                                           limit_file_size=100, timeout=120)
    assert finished.returncode == 1 and "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot write {tmp_path / dataset_info.SUMMARY_NAME}: ")
    assert fault_fixtures.snapshot(tmp_path) == before  # no build_summary.json.incomplete

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
