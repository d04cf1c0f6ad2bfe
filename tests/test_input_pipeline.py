"""input_fn over hand-written ImageNet-schema shards: eval covers each record once in a fixed order,
training batches, label offsets and their errors, worker sharding, synthetic data."""

import functools
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_prep import builder
from official.utils.errors import PipelineError
from official.xception import input_pipeline
from tests import record_fixtures

NUM_RECORDS = 23
NUM_SHARDS = 3
SMALL = dict(image_size=71, num_classes=1000)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """23 records with labels 1..23 (one per record, so labels identify records) in 3 shards per split."""
    directory = str(tmp_path_factory.mktemp("shards"))
    labels = list(range(1, NUM_RECORDS + 1))
    record_fixtures.write_labelled_split(directory, "train", labels, NUM_SHARDS)
    record_fixtures.write_labelled_split(directory, "validation", labels, NUM_SHARDS)
    return directory


def collect(dataset, max_batches=100):
    images, labels = [], []
    for image_batch, label_batch in dataset.take(max_batches):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return images, labels


def test_eval_yields_each_record_once_in_file_order_with_partial_batch(data_dir):
    dataset = input_pipeline.input_fn(False, data_dir, 5, **SMALL)
    images, labels = collect(dataset)

    assert [len(batch) for batch in labels] == [5, 5, 5, 5, 3]
    # Record k went to shard k % 3; shards are read in name order, records in file order.
    expected_order = [k for shard in range(NUM_SHARDS) for k in range(shard, NUM_RECORDS, NUM_SHARDS)]
    assert np.concatenate(labels).tolist() == expected_order
    assert all(batch.dtype == np.float32 and batch.shape[1:] == (71, 71, 3) for batch in images)
    all_images = np.concatenate(images)
    assert all_images.min() >= -1.0 and all_images.max() <= 1.0

    again_images, again_labels = collect(input_pipeline.input_fn(False, data_dir, 5, **SMALL))
    np.testing.assert_array_equal(np.concatenate(again_labels), np.concatenate(labels))
    np.testing.assert_array_equal(np.concatenate(again_images), all_images)


def test_training_repeats_shuffles_and_keeps_full_batches(data_dir):
    dataset = input_pipeline.input_fn(True, data_dir, 4, shuffle_buffer=50, dtype=tf.bfloat16, **SMALL)
    images, labels = collect(dataset, max_batches=3 * NUM_RECORDS)

    assert all(batch.shape == (4, 71, 71, 3) for batch in images)
    assert images[0].dtype == tf.bfloat16.as_numpy_dtype
    seen = np.concatenate(labels)
    assert seen.dtype == np.int32
    # 12 epochs' worth of records: every record appears, each about equally often.
    counts = np.bincount(seen, minlength=NUM_RECORDS)
    assert counts.size == NUM_RECORDS and counts.min() >= 8 and counts.max() <= 16
    assert seen[:NUM_RECORDS].tolist() != sorted(seen[:NUM_RECORDS].tolist())


def test_seeded_training_order_is_reproducible(data_dir):
    def first_labels(seed):
        dataset = input_pipeline.input_fn(True, data_dir, 8, shuffle_buffer=50, seed=seed, **SMALL)
        return np.concatenate(collect(dataset, max_batches=6)[1]).tolist()

    assert first_labels(7) == first_labels(7)
    assert first_labels(7) != first_labels(8)


def test_seeded_order_depends_on_the_start_step_and_the_worker(data_dir):
    def first_labels(start_step, worker=None):
        context = (None if worker is None else
                   tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker))
        dataset = input_pipeline.input_fn(True, data_dir, 8, context, shuffle_buffer=50, seed=7,
                                          start_step=start_step, **SMALL)
        return np.concatenate(collect(dataset, max_batches=4)[1]).tolist()

    assert first_labels(0) == first_labels(0)
    assert first_labels(120) == first_labels(120)
    assert first_labels(0) != first_labels(120)
    assert first_labels(0, worker=1) == first_labels(0, worker=1)
    assert first_labels(0, worker=1) != first_labels(120, worker=1)
    # Workers read different files; their seeds differ as well.
    assert input_pipeline.shuffle_seed(7, 0, 0) != input_pipeline.shuffle_seed(7, 1, 0)


def test_the_estimator_passes_input_context_to_the_training_input_fn(data_dir):
    # The Estimator hands an input_fn the InputContext only when fn_args lists it.
    from tensorflow.python.util import function_utils  # pylint: disable=g-import-not-at-top
    bound = functools.partial(input_pipeline.input_fn, True, data_dir=data_dir, batch_size=8,
                              seed=1, start_step=5, **SMALL)
    assert "input_context" in function_utils.fn_args(bound)


def test_label_offset_zero_keeps_record_labels(data_dir):
    dataset = input_pipeline.input_fn(False, data_dir, 8, label_offset=0, image_size=71,
                                      num_classes=1001)
    labels = np.concatenate(collect(dataset)[1])
    assert sorted(labels.tolist()) == list(range(1, NUM_RECORDS + 1))


@pytest.mark.parametrize("bad_label, label_offset, num_classes", [
    (0, 1, 1000),      # the "background" label of 1001-way data read as 1000 classes
    (1001, 1, 1000),   # one past the last class
    (1000, 0, 1000),   # 1..1000 labels read without the offset
])
def test_out_of_range_label_fails_with_a_clear_message(tmp_path, bad_label, label_offset,
                                                       num_classes):
    record_fixtures.write_labelled_split(str(tmp_path), "validation", [5, bad_label, 7], 1)
    dataset = input_pipeline.input_fn(False, str(tmp_path), 2, image_size=71,
                                      num_classes=num_classes, label_offset=label_offset)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        collect(dataset)
    message = input_pipeline.data_error_message(raised.value)
    low, high = label_offset, label_offset + num_classes - 1
    shard = os.path.join(str(tmp_path), "validation-00000-of-00001")
    assert message == (
        f"{shard} record 1: image/class/label {bad_label} is outside the labels {low}..{high}; "
        f"--label_offset={label_offset} and --num_classes={num_classes} accept labels {low}..{high}: "
        "use --label_offset=1 for labels 1..1000 with 1000 classes, --label_offset=0 for 1001 "
        "classes or 0-based labels")


def test_data_error_message_ignores_other_errors():
    error = tf.errors.InvalidArgumentError(None, None, "Invalid JPEG data or crop window")
    assert input_pipeline.data_error_message(error) is None


def test_no_matching_files_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match=r"no files match .*train-\*-of-\*.*--data_dir"):
        input_pipeline.input_fn(True, str(tmp_path), 8)


def test_missing_shard_is_a_pipeline_error_and_non_shard_names_are_ignored(tmp_path):
    paths = record_fixtures.write_labelled_split(str(tmp_path), "validation", [1, 2, 3], 3)
    os.rename(paths[0], paths[0] + ".backup")
    with pytest.raises(PipelineError, match=r"1 of 3 shards .* missing \(first: validation-00000-of-00003\)"):
        input_pipeline.list_input_files(str(tmp_path), False)
    os.rename(paths[0] + ".backup", paths[0])
    assert input_pipeline.list_input_files(str(tmp_path), False) == paths
    record_fixtures.write_labelled_split(str(tmp_path), "validation", [1], 1)
    with pytest.raises(PipelineError, match=r"shard sets of different sizes \(1, 3\)"):
        input_pipeline.list_input_files(str(tmp_path), False)


def test_two_workers_read_disjoint_files_covering_the_split(data_dir):
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i)
                for i in range(2)]
    per_worker = [input_pipeline.list_input_files(data_dir, True, context) for context in contexts]
    assert not set(per_worker[0]) & set(per_worker[1])
    assert sorted(per_worker[0] + per_worker[1]) == input_pipeline.list_input_files(data_dir, True)

    worker_labels = [
        set(np.concatenate(collect(input_pipeline.input_fn(
            False, data_dir, 4, input_context=context, **SMALL))[1]).tolist())
        for context in contexts]
    assert not worker_labels[0] & worker_labels[1]
    assert worker_labels[0] | worker_labels[1] == set(range(NUM_RECORDS))


def test_fewer_files_than_workers_is_a_pipeline_error(data_dir):
    context = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=0)
    with pytest.raises(PipelineError, match="only 3 files .* 4 input pipelines"):
        input_pipeline.input_fn(True, data_dir, 8, input_context=context)


def test_reads_png_records_boxes_and_records_without_optional_fields(tmp_path):
    rng = np.random.default_rng(5)
    pixels = record_fixtures.random_photo(rng, 60, 80)
    with_boxes = record_fixtures.make_example(
        record_fixtures.encode_image(pixels, "JPEG"), 3, 60, 80,
        bboxes=[(0.1, 0.2, 0.6, 0.7), (0.3, 0.3, 0.9, 0.95)])
    png = record_fixtures.make_example(
        record_fixtures.encode_image(pixels, "PNG"), 4, 60, 80, image_format="PNG")
    # Some tools write only the image and its label.
    minimal = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[record_fixtures.encode_image(pixels, "JPEG")])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[5])),
    })).SerializeToString()
    for split in ("train", "validation"):
        record_fixtures.write_shards(str(tmp_path), split, [with_boxes, png, minimal], 1)

    _, eval_labels = collect(input_pipeline.input_fn(False, str(tmp_path), 3, **SMALL))
    assert np.concatenate(eval_labels).tolist() == [2, 3, 4]
    train_images, train_labels = collect(
        input_pipeline.input_fn(True, str(tmp_path), 3, shuffle_buffer=3, **SMALL), max_batches=4)
    assert set(np.concatenate(train_labels).tolist()) == {2, 3, 4}
    assert np.isfinite(np.concatenate(train_images)).all()


def test_private_threadpool_option_is_applied(data_dir):
    dataset = input_pipeline.input_fn(True, data_dir, 2, datasets_num_private_threads=3, **SMALL)
    assert dataset.options().threading.private_threadpool_size == 3


@pytest.mark.parametrize("arguments, message", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=8, label_offset=-1), "label_offset"),
    (dict(batch_size=8, image_size=64), "image_size 64"),
    (dict(batch_size=8, datasets_num_private_threads=0), "datasets_num_private_threads"),
])
def test_bad_arguments_raise_pipeline_error(data_dir, arguments, message):
    with pytest.raises(PipelineError, match=message):
        input_pipeline.input_fn(True, data_dir, **arguments)


def write_raw_imagenet(root, rng):
    """Class folders as ImageNet ships them: synset n00000001 all red, n00000002 all blue, plus a
    grayscale JPEG and a PNG saved as .JPEG (both quirks occur in ImageNet); a box for one image."""
    colours = {"n00000001": (200, 30, 30), "n00000002": (30, 30, 200)}
    for split, per_class in (("train", 4), ("validation", 3)):
        for synset, colour in colours.items():
            os.makedirs(os.path.join(root, split, synset))
            for index in range(per_class):
                noise = rng.integers(-20, 20, size=(48, 64, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                image_format = "PNG" if index == 1 else "JPEG"
                name = os.path.join(root, split, synset, f"{synset}_{index}.JPEG")
                with open(name, "wb") as image_file:
                    image_file.write(record_fixtures.encode_image(pixels, image_format))
    gray = os.path.join(root, "train", "n00000002", "n00000002_9.JPEG")
    with open(gray, "wb") as image_file:
        image_file.write(record_fixtures.encode_image(np.full((40, 40), 90, np.uint8)))
    box_file = os.path.join(root, "boxes.csv")
    with open(box_file, "w") as csv_file:
        csv_file.write("n00000001_0.JPEG,0.1000,0.2000,0.6000,0.9000\n")
    return box_file


def test_reads_shards_written_by_data_prep(tmp_path):
    box_file = write_raw_imagenet(str(tmp_path / "raw"), np.random.default_rng(6))
    output = str(tmp_path / "shards")
    builder.build(builder.BuildConfig(
        output_directory=output, train_directory=str(tmp_path / "raw" / "train"),
        validation_directory=str(tmp_path / "raw" / "validation"), bounding_box_file=box_file,
        train_shards=2, validation_shards=2, num_workers=1, first_label=1))

    images, labels = collect(input_pipeline.input_fn(False, output, 4, image_size=71, num_classes=2))
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert len(labels) == 6 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # Sorted synsets with labels 1..2 minus label_offset 1: red n00000001 -> 0, blue n00000002 -> 1.
    red_dominant = images[..., 0].mean(axis=(1, 2)) > images[..., 2].mean(axis=(1, 2))
    np.testing.assert_array_equal(red_dominant, labels == 0)

    train_images, train_labels = collect(input_pipeline.input_fn(
        True, output, 3, image_size=71, num_classes=2, shuffle_buffer=9), max_batches=6)
    assert set(np.concatenate(train_labels).tolist()) == {0, 1}
    assert all(batch.shape == (3, 71, 71, 3) for batch in train_images)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_synthetic_data_shapes_and_ranges(dtype):
    dataset = input_pipeline.synthetic_input_fn(True, 6, image_size=71, num_classes=10, dtype=dtype)
    images, labels = collect(dataset, max_batches=3)
    assert len(images) == 3
    assert images[0].shape == (6, 71, 71, 3) and images[0].dtype == dtype.as_numpy_dtype
    values = np.concatenate(images).astype(np.float32)
    assert values.min() >= -1.0 and values.max() <= 1.0 and values.std() > 0.3
    labels = np.concatenate(labels)
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
