"""Shards built the established way (tests/established_builder.py, no build_summary.json): describing
them, then training, evaluating and exporting with their class names; what imagenet_main says and
refuses without a summary; training on a subset of shards."""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_prep import builder
from data_prep import demo_dataset
from data_prep import describe_shards
from official.utils import dataset_info
from official.utils.errors import PipelineError
from official.xception import evaluate_saved_model
from official.xception import export
from official.xception import imagenet_main
from official.xception import input_pipeline
from tests import established_builder
from tests import export_fixtures
from tests import main_flags
from tests import record_fixtures
from tests import tiny_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 3
TRAIN_PER_CLASS = 8
VAL_PER_CLASS = 3
IMAGE_SIZE = 71


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The demo dataset with its validation images moved into synset folders, as the established
    preprocessing script leaves them."""
    directory = str(tmp_path_factory.mktemp("raw"))
    demo_dataset.make_demo_dataset(directory, num_classes=NUM_CLASSES, train_per_class=TRAIN_PER_CLASS,
                                   val_per_class=VAL_PER_CLASS, image_size=72)
    established_builder.preprocess_validation(os.path.join(directory, "val"),
                                              os.path.join(directory, "val_labels.txt"))
    return directory


@pytest.fixture(scope="module")
def established_shards(raw, tmp_path_factory):
    """(shard directory, {split: {synset: images}}) written by the port of the established builder."""
    output = str(tmp_path_factory.mktemp("established"))
    synset_to_human = established_builder.read_synset_to_human(os.path.join(raw, "metadata.txt"))
    labels_file = os.path.join(raw, "synsets.txt")
    counts = {
        "train": established_builder.process_dataset("train", os.path.join(raw, "train"), 2,
                                                     synset_to_human, labels_file, output),
        "validation": established_builder.process_dataset("validation", os.path.join(raw, "val"), 1,
                                                          synset_to_human, labels_file, output),
    }
    return output, counts


@pytest.fixture
def shard_copy(established_shards, tmp_path):
    """A fresh copy of the established shards (tests add summaries and remove shards)."""
    directory = str(tmp_path / "shards")
    shutil.copytree(established_shards[0], directory)
    return directory


_flags = main_flags.parse


def _small_run(**values):
    return _flags(dict(image_size=IMAGE_SIZE, batch_size=8, num_gpus=0, moving_average_decay=0.5,
                       dropout_rate=0.0, shuffle_buffer=32, base_learning_rate=0.05,
                       base_batch_size=8), **values)


def test_describe_shards_writes_what_data_prep_writes_for_the_same_images(raw, established_shards,
                                                                          shard_copy, tmp_path):
    _, counts = established_shards
    result = subprocess.run([sys.executable, "-m", "data_prep.describe_shards",
                             f"--data_dir={shard_copy}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "describe: 3/3 shards (100.0%)" in result.stderr  # progress with rate and duration
    assert "shards/s, done in" in result.stderr
    with open(os.path.join(shard_copy, describe_shards.SUMMARY_NAME)) as handle:
        summary = json.load(handle)
    synsets = [c.synset for c in demo_dataset.demo_classes(NUM_CLASSES)]
    texts = {c.synset: c.text for c in demo_dataset.demo_classes(NUM_CLASSES)}
    assert summary["classes"] == [{"label": i + 1, "name": synset, "text": texts[synset]}
                                  for i, synset in enumerate(synsets)]
    assert summary["settings"]["label_range"] == [1, NUM_CLASSES]
    for split, per_class in counts.items():
        assert {name: entry["images_found"] for name, entry in summary["splits"][split]["classes"]
                .items()} == per_class
        assert summary["splits"][split]["images_written"] == sum(per_class.values())

    # data_prep over the same raw images: readers see the same dataset in both summaries.
    built = str(tmp_path / "data_prep")
    builder.build(builder.BuildConfig(
        output_directory=built, train_directory=os.path.join(raw, "train"),
        validation_directory=os.path.join(raw, "val"),
        imagenet_metadata_file=os.path.join(raw, "metadata.txt"), train_shards=2,
        validation_shards=1, progress_interval=1e9), log=open(os.devnull, "w"))
    described, reference = (dataset_info.read_dataset_info(d) for d in (shard_copy, built))
    assert described.built_by == "describe_shards" and reference.built_by == "data_prep"
    assert (described.first_label, described.classes, described.train_examples,
            described.eval_examples) == (reference.first_label, reference.classes,
                                         reference.train_examples, reference.eval_examples)


def test_describe_shards_keeps_an_existing_summary_unless_told(shard_copy):
    describe_shards.describe_and_write(shard_copy, log=open(os.devnull, "w"))
    path = os.path.join(shard_copy, describe_shards.SUMMARY_NAME)
    with open(path, "w") as handle:
        handle.write("{}")
    result = subprocess.run([sys.executable, "-m", "data_prep.describe_shards",
                             f"--data_dir={shard_copy}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path} exists already; pass --overwrite to replace it")
    with open(path) as handle:
        assert handle.read() == "{}"
    describe_shards.describe_and_write(shard_copy, overwrite=True, log=open(os.devnull, "w"))
    assert dataset_info.read_dataset_info(shard_copy).train_examples == NUM_CLASSES * TRAIN_PER_CLASS
    assert not [name for name in os.listdir(shard_copy) if name.endswith(".incomplete")]


def _one_record_shard(directory, split, label, synset, index=0, total=1):
    example = record_fixtures.make_example(b"not decoded", label, 1, 1, synset=synset)
    (path,) = record_fixtures.write_shards(directory, split, [example], total, indexes=[index])
    return path


def test_describe_shards_errors_are_one_line(tmp_path):
    def error_of(directory):
        with pytest.raises(PipelineError) as raised:
            describe_shards.describe(str(directory), log=open(os.devnull, "w"))
        assert "\n" not in str(raised.value)
        return str(raised.value)

    assert "holds no train-*-of-* or validation-*-of-* shards" in error_of(tmp_path)
    assert "does not exist" in error_of(tmp_path / "missing")

    mixed = tmp_path / "mixed"
    _one_record_shard(str(mixed), "train", 1, "n01", 0, 2)
    _one_record_shard(str(mixed), "train", 1, "n02", 1, 2)
    assert "label 1 is 'n02' there but 'n01' elsewhere" in error_of(mixed)

    gap = tmp_path / "gap"
    _one_record_shard(str(gap), "train", 1, "n01", 0, 2)
    _one_record_shard(str(gap), "train", 3, "n03", 1, 2)
    assert "no record has label 2" in error_of(gap)

    truncated = tmp_path / "truncated"
    path = _one_record_shard(str(truncated), "validation", 1, "n01")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 3)
    assert f"{path} is truncated or corrupt" in error_of(truncated)


def test_shards_of_another_builder_train_evaluate_and_export_with_their_names(shard_copy, tmp_path):
    describe_shards.describe_and_write(shard_copy, log=open(os.devnull, "w"))
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    flag_values = _small_run(data_dir=shard_copy, model_dir=model_dir, export_dir=export_dir,
                             train_epochs=2)
    results = imagenet_main.run(flag_values, model_builder=tiny_network.tiny_network)
    assert (flag_values.num_classes, flag_values.label_offset) == (NUM_CLASSES, 1)
    assert results["examples"] == NUM_CLASSES * VAL_PER_CLASS
    classes = demo_dataset.demo_classes(NUM_CLASSES)
    expected_names = [(c.synset, c.text) for c in classes]
    (version,) = os.listdir(export_dir)
    assert export.read_class_names(str(export_dir / version)) == expected_names
    outputs = export_fixtures.serve_first_validation_record(str(export_dir / version), shard_copy)
    names = [name.encode() for name, _ in expected_names]
    assert outputs["class_names"].numpy()[0] == names[int(outputs["classes"][0])]

    # The SavedModel's own evaluation, also on a subset of a validation set of two shards.
    evaluated = evaluate_saved_model.evaluate(str(export_dir / version), shard_copy)
    assert evaluated["examples"] == results["examples"]
    assert evaluated["top_1"] == pytest.approx(results["top_1_accuracy"])
    subset = tmp_path / "subset"
    subset.mkdir()
    shutil.copy(os.path.join(shard_copy, "validation-00000-of-00001"),
                subset / "validation-00001-of-00002")
    with pytest.raises(PipelineError, match="copy the missing shards, or pass "
                                            "--allow_incomplete_shards"):
        evaluate_saved_model.evaluate(str(export_dir / version), str(subset))
    evaluated_subset = evaluate_saved_model.evaluate(str(export_dir / version), str(subset),
                                                     allow_incomplete_shards=True)
    assert evaluated_subset["examples"] == evaluated["examples"]
    assert evaluated_subset["top_1"] == evaluated["top_1"]


def _warnings(caplog):
    return "\n".join(record.getMessage() for record in caplog.records
                     if record.levelno >= logging.WARNING)


def test_without_a_summary_the_assumed_values_are_named_before_anything_runs(shard_copy, tmp_path,
                                                                             caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(PipelineError) as raised:
        imagenet_main.run(_small_run(data_dir=shard_copy, model_dir=tmp_path / "model"),
                          model_builder=tiny_network.tiny_network)
    warning = _warnings(caplog)
    for assumed in ("1,000 classes", "label offset 1", "1,281,167 training images",
                    "50,000 validation images",
                    f"python -m data_prep.describe_shards --data_dir={shard_copy}"):
        assert assumed in warning
    # 24 images are not ImageNet: nothing trains with ImageNet's epoch.
    message = str(raised.value)
    assert "too few for the assumed --train_examples=1,281,167" in message
    assert f"run python -m data_prep.describe_shards --data_dir={shard_copy}" in message
    assert "\n" not in message
    assert not os.path.exists(tmp_path / "model" / "checkpoint")


def test_without_a_summary_given_sizes_are_trusted_and_named_ones_not_repeated(shard_copy, tmp_path,
                                                                              caplog):
    with caplog.at_level(logging.WARNING):
        info = imagenet_main.apply_dataset_info(_small_run(
            data_dir=shard_copy, model_dir=tmp_path, num_classes=NUM_CLASSES,
            train_examples=24, eval_examples=9))
    assert info is None
    warning = _warnings(caplog)
    assert "label offset 1" in warning and "describe_shards" in warning
    assert "classes" not in warning and "training images" not in warning


def test_a_subset_of_imagenet_sized_shards_is_not_taken_for_another_dataset(tmp_path, caplog):
    # Ten shards of 1024 the size of ImageNet's (sparse files: nothing is written).
    for index in range(10):
        with open(tmp_path / ("train-%05d-of-01024" % index), "wb") as handle:
            handle.truncate(140_000_000)
    with open(tmp_path / "validation-00000-of-00001", "wb") as handle:
        handle.truncate(1000)
    flag_values = _flags(data_dir=tmp_path, model_dir=tmp_path / "model",
                         allow_incomplete_shards=True)
    with caplog.at_level(logging.WARNING):
        assert imagenet_main.apply_dataset_info(flag_values) is None
    assert "1,281,167 training images" in _warnings(caplog)


def _remove_second_train_shard(directory):
    os.remove(os.path.join(directory, "train-00001-of-00002"))


@pytest.mark.parametrize("summary, hint", [
    (None, "copy the missing shards, or pass --allow_incomplete_shards"),
    ("describe_shards", "copy the missing shards, or pass --allow_incomplete_shards"),
    ("data_prep", "finish the data_prep run (rerunning it resumes)"),
])
def test_missing_shards_are_an_error_whose_hint_fits_where_they_came_from(shard_copy, summary,
                                                                          hint):
    if summary:
        content = describe_shards.describe(shard_copy, log=open(os.devnull, "w"))
        if summary == "data_prep":
            del content["built_by"]  # data_prep's summaries carry no such key
        describe_shards.write_summary(shard_copy, content)
    _remove_second_train_shard(shard_copy)
    with pytest.raises(PipelineError) as raised:
        input_pipeline.list_input_files(shard_copy, True)
    assert str(raised.value).startswith("1 of 2 shards matching")
    assert "(first: train-00001-of-00002)" in str(raised.value)
    assert hint in str(raised.value)
    if summary != "data_prep":
        assert "data_prep run" not in str(raised.value)


def test_allow_incomplete_shards_trains_on_the_shards_present_and_says_how_many(
        established_shards, shard_copy, tmp_path, caplog):
    _remove_second_train_shard(shard_copy)
    describe_shards.describe_and_write(shard_copy, log=open(os.devnull, "w"))
    flag_values = _small_run(data_dir=shard_copy, model_dir=tmp_path / "model", max_train_steps=2,
                             allow_incomplete_shards=True)
    with caplog.at_level(logging.INFO, logger="absl"):
        results = imagenet_main.run(flag_values, model_builder=tiny_network.tiny_network)
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert ("--allow_incomplete_shards: training reads 1 of 2 shards (an epoch is --train_examples: "
            f"{flag_values.train_examples})") in messages
    assert "--allow_incomplete_shards: evaluation reads 1 of 1 shards (--eval_examples: 9)" in messages
    assert results["global_step"] == 2
    # The epoch is what the shards present hold, as described.
    remaining = sum(1 for _ in tf.data.TFRecordDataset(
        os.path.join(shard_copy, "train-00000-of-00002")))
    assert flag_values.train_examples == remaining
    assert remaining < sum(established_shards[1]["train"].values())

    dataset = input_pipeline.input_fn(True, shard_copy, 4, image_size=IMAGE_SIZE,
                                      num_classes=NUM_CLASSES, allow_incomplete_shards=True)
    images, labels = next(iter(dataset))
    assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.all((labels.numpy() >= 0) & (labels.numpy() < NUM_CLASSES))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
