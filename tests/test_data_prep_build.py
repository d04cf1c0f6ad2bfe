"""data_prep.build_imagenet_data: schema, conversions, bad files, shuffling, determinism, tar input,
kill-and-resume, and the one-line errors. TensorFlow's own reader and decoder are the oracle."""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from data_prep import builder, original_layout
from official.utils.errors import PipelineError
from tests import data_prep_fixtures as fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SHARDS, VALIDATION_SHARDS = 3, 2

def config_for(tree, output_directory, **overrides):
    settings = dict(output_directory=output_directory, train_directory=tree.train_directory,
                    validation_directory=tree.validation_directory,
                    validation_labels_file=tree.validation_labels_file,
                    imagenet_metadata_file=tree.metadata_file, bounding_box_file=tree.bounding_box_file,
                    train_shards=TRAIN_SHARDS, validation_shards=VALIDATION_SHARDS, num_workers=1)
    settings.update(overrides)
    return builder.BuildConfig(**settings)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return fixtures.make_raw_tree(str(tmp_path_factory.mktemp("raw")))


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    """One uninterrupted in-process build: (output directory, summary, log text)."""
    output_directory = str(tmp_path_factory.mktemp("reference"))
    log = io.StringIO()
    summary = builder.build(config_for(tree, output_directory), log=log)
    return output_directory, summary, log.getvalue()


def test_every_good_image_appears_once_with_its_label_synset_text_boxes_and_shape(tree, reference):
    output_directory, _, _ = reference
    for split, expected_images in (("train", tree.good_train), ("validation", tree.good_validation)):
        records = [record for shard in fixtures.read_shards(output_directory, split) for record in shard]
        by_name = {record["image/filename"].decode(): record for record in records}
        assert len(records) == len(by_name) == len(expected_images), split
        assert set(by_name) == set(expected_images)
        for name, expected in expected_images.items():
            record = by_name[name]
            label = fixtures.SYNSETS.index(expected.synset) + 1  # sorted synsets, 0 = background
            assert record["image/class/label"] == label
            assert record["image/class/synset"].decode() == expected.synset
            assert record["image/class/text"].decode() == fixtures.TEXTS[expected.synset]
            assert (record["image/format"], record["image/colorspace"], record["image/channels"]) == (
                b"JPEG", b"RGB", 3)
            assert (record["image/height"], record["image/width"]) == (expected.height, expected.width)
            decoded = tf.io.decode_jpeg(record["image/encoded"]).numpy()
            assert decoded.shape == (expected.height, expected.width, 3)
            boxes = list(zip(*(record[f"image/object/bbox/{key}"] for key in ("xmin", "ymin", "xmax", "ymax"))))
            np.testing.assert_allclose(np.array(boxes).reshape(-1, 4), np.array(expected.boxes).reshape(-1, 4),
                                       atol=1e-6)
            assert record["image/object/bbox/label"] == [label] * len(expected.boxes)


def test_rgb_jpegs_are_stored_byte_for_byte_and_conversions_keep_the_pixels(tree, reference):
    output_directory, summary, _ = reference
    records = {record["image/filename"].decode(): record
               for shard in fixtures.read_shards(output_directory, "train") for record in shard}
    conversions = {os.path.basename(item["path"]): item["conversion"] for item in summary["converted_files"]}
    assert conversions == {"n01000001_png.JPEG": "PNG to JPEG", "n01000002_cmyk.JPEG": "CMYK JPEG to RGB JPEG",
                           "n01000002_gray.JPEG": "grayscale JPEG to RGB JPEG"}
    for name, expected in tree.good_train.items():
        encoded = records[name]["image/encoded"]
        if expected.kind == "rgb":
            assert encoded == expected.source_bytes, name
            continue
        assert encoded[:3] == b"\xff\xd8\xff" and encoded != expected.source_bytes
        decoded = tf.io.decode_jpeg(encoded).numpy().astype(int)
        # Hand-made references: the PNG's own pixels, CMYK (0, 255, 255, 0) = pure red, gray 77 on all channels.
        assert np.abs(decoded - expected.rgb_reference).mean() < 4, name
        assert np.abs(decoded - expected.rgb_reference).max() < 40, name


def test_bad_files_are_skipped_listed_with_reasons_and_warned_once(tree, reference):
    output_directory, summary, log = reference
    skipped = {os.path.basename(item["path"]): item["reason"] for item in summary["skipped_files"]}
    assert set(skipped) == set(tree.bad_train)
    for name, reason_fragment in tree.bad_train.items():
        assert reason_fragment in skipped[name], (name, skipped[name])
        warnings = [line for line in log.splitlines() if line.startswith("warning: skipped") and name in line]
        assert len(warnings) == 1, warnings
    train = summary["splits"]["train"]
    assert train["images_written"] == len(tree.good_train)
    assert train["images_skipped"] == len(tree.bad_train)
    assert train["images_found"] == len(tree.good_train) + len(tree.bad_train)
    per_class = {synset: (info["images_found"], info["images_skipped"]) for synset, info in train["classes"].items()}
    assert per_class == {"n01000001": (9, 2), "n01000002": (9, 1), "n01000003": (8, 1)}
    assert summary["status"] == "complete"
    with open(os.path.join(output_directory, builder.SUMMARY_NAME)) as summary_file:
        assert json.load(summary_file)["splits"] == summary["splits"]
    assert sorted(os.listdir(output_directory)) == sorted(
        [builder.SUMMARY_NAME, builder.LOCK_NAME] + [f"train-{i:05d}-of-00003" for i in range(3)]
        + [f"validation-{i:05d}-of-00002" for i in range(2)])


def test_shards_are_shuffled_across_classes_and_balanced(reference):
    output_directory, summary, _ = reference
    train_shards = fixtures.read_shards(output_directory, "train")
    labels = [record["image/class/label"] for shard in train_shards for record in shard]
    changes = sum(a != b for a, b in zip(labels, labels[1:]))
    assert changes >= len(labels) // 3, labels  # class-sorted order would change label only twice
    validation_sizes = [len(shard) for shard in fixtures.read_shards(output_directory, "validation")]
    assert sorted(validation_sizes) == [4, 5]
    # Planned sizes (written + skipped) differ by at most one; a skipped bad file shortens its own shard.
    planned = [entry["records"] + len(entry["skipped"]) for name, entry in sorted(summary["shards"].items())
               if name.startswith("train")]
    assert max(planned) - min(planned) <= 1 and sum(planned) == summary["splits"]["train"]["images_found"]


def test_first_label_zero_follows_the_labels_file_order(tree, tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(reversed(fixtures.SYNSETS)) + "\n")
    builder.build(builder.BuildConfig(
        output_directory=str(tmp_path / "out"), validation_directory=tree.validation_directory,
        validation_labels_file=tree.validation_labels_file, labels_file=str(labels_file), validation_shards=1,
        first_label=0), log=io.StringIO())
    records = fixtures.read_shards(str(tmp_path / "out"), "validation")[0]
    for record in records:
        synset = record["image/class/synset"].decode()
        assert record["image/class/label"] == 2 - fixtures.SYNSETS.index(synset)
        assert record["image/class/text"].decode() == synset  # no metadata file: the class name
    assert {record["image/filename"].decode() for record in records} == set(tree.good_validation)


def test_two_worker_processes_write_the_same_bytes_as_one(tree, reference, tmp_path):
    summary = builder.build(config_for(tree, str(tmp_path), num_workers=2), log=io.StringIO())
    assert fixtures.shard_bytes(str(tmp_path)) == fixtures.shard_bytes(reference[0])
    assert summary["splits"] == reference[1]["splits"]


def test_the_commands_own_process_does_not_import_tensorflow():
    # Only the workers (forked from a server that imports it once) need TensorFlow; the process that
    # plans, journals and reports starts at once and stays small without it.
    for command in ("data_prep.build_imagenet_data", "data_prep.make_demo_dataset",
                    "data_prep.process_bounding_boxes"):
        result = subprocess.run(
            [sys.executable, "-c", f"import sys, {command}; print(sorted(name for name in sys.modules "
                                   "if name.split('.')[0] in ('tensorflow', 'keras')))"],
            cwd=REPO, capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "[]", command


def test_original_tar_input_gives_the_same_shards_as_folders(tree, reference, tmp_path):
    original_layout.make_train_tar(tree.train_directory, str(tmp_path / "train.tar"))
    original_layout.make_flat_tar(tree.validation_directory, str(tmp_path / "val.tar"))
    summary = builder.build(config_for(tree, str(tmp_path / "out"), train_directory=None,
                                       train_tar=str(tmp_path / "train.tar"), validation_directory=None,
                                       validation_tar=str(tmp_path / "val.tar")), log=io.StringIO())
    assert fixtures.shard_bytes(str(tmp_path / "out")) == fixtures.shard_bytes(reference[0])
    assert {os.path.basename(item["path"].split(":")[-1]) for item in summary["skipped_files"]} == set(
        tree.bad_train)


def _run_cli(arguments, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "data_prep.build_imagenet_data"] + arguments, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _cli_arguments(tree, output_directory, train_shards):
    return [f"--train_directory={tree.train_directory}", f"--validation_directory={tree.validation_directory}",
            f"--validation_labels_file={tree.validation_labels_file}",
            f"--imagenet_metadata_file={tree.metadata_file}", f"--bounding_box_file={tree.bounding_box_file}",
            f"--output_directory={output_directory}", f"--train_shards={train_shards}",
            f"--validation_shards={VALIDATION_SHARDS}", "--num_workers=1"]


def _kill_after_shards(arguments, output_directory, count):
    """Starts the command line build, SIGKILLs it once `count` shards are vouched for; returns those
    vouched for once it is dead."""
    process = _run_cli(arguments)
    deadline = time.monotonic() + 120
    while (len(fixtures.vouched_shards(output_directory)) < count and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return fixtures.vouched_shards(output_directory)


def _tear_last_write(output_directory):
    """What a kill in the middle of writing leaves: half of the journal's last line, and a half-written
    temporary summary (the summary itself is only ever replaced by rename)."""
    journal = os.path.join(output_directory, builder.JOURNAL_NAME)
    with open(journal, "rb") as journal_file:
        lines = journal_file.read().splitlines(keepends=True)
    with open(journal, "wb") as journal_file:
        journal_file.write(b"".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])
    assert not os.path.exists(os.path.join(output_directory, builder.SUMMARY_NAME))  # written at the end
    with open(os.path.join(output_directory, builder.SUMMARY_NAME + ".incomplete"), "w") as temporary:
        temporary.write('{\n "status": "complete",\n "first_label": 1,\n "classes": [\n  {\n   "label"')
    return json.loads(lines[-1])["shard"]


def test_killed_build_leaves_only_complete_shards_and_resuming_equals_an_uninterrupted_run(tree, tmp_path):
    many_shards = 26  # one image per shard: many chances to be killed between and inside shards
    uninterrupted = str(tmp_path / "uninterrupted")
    builder.build(config_for(tree, uninterrupted, train_shards=many_shards), log=io.StringIO())
    expected = fixtures.shard_bytes(uninterrupted)

    resumed = str(tmp_path / "resumed")
    arguments = _cli_arguments(tree, resumed, many_shards)
    first_vouched = _kill_after_shards(arguments, resumed, 3)
    finished = fixtures.shard_bytes(resumed)
    assert 3 <= len(first_vouched) <= len(finished) < len(expected), "the build must be killed part-way"
    for name, content in finished.items():
        assert content == expected[name], f"{name} exists under its final name but is incomplete"
    torn = _tear_last_write(resumed)

    assert torn not in fixtures.vouched_shards(resumed)

    # Killed again, maybe before it verified every shard of the first run: those stay reusable.
    second_vouched = _kill_after_shards(arguments, resumed, len(first_vouched) + 1)
    assert first_vouched.keys() - {torn} <= second_vouched.keys() and len(second_vouched) < len(expected)

    process = _run_cli(arguments)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert fixtures.shard_bytes(resumed) == expected
    assert not [name for name in os.listdir(resumed) if name.startswith(".incomplete")]
    assert not os.path.exists(os.path.join(resumed, builder.JOURNAL_NAME))  # folded into the summary
    with open(os.path.join(resumed, builder.SUMMARY_NAME)) as summary_file:
        summary = json.load(summary_file)
    with open(os.path.join(uninterrupted, builder.SUMMARY_NAME)) as summary_file:
        uninterrupted_summary = json.load(summary_file)
    assert summary["status"] == "complete"
    assert summary["shards"] == uninterrupted_summary["shards"]
    assert summary["splits"] == uninterrupted_summary["splits"]
    assert summary["shards_reused_from_earlier_run"] == len(second_vouched)
    assert f"{len(second_vouched)} finished shards reused" in stderr

    # Killed after the complete summary but before the journal was deleted: both vouch for the same shards.
    with open(os.path.join(resumed, builder.JOURNAL_NAME), "w") as journal_file:
        journal_file.writelines(json.dumps({"shard": name, **entry}) + "\n" for name, entry in second_vouched.items())
    again = builder.build(config_for(tree, resumed, train_shards=many_shards), log=io.StringIO())
    assert again["shards_reused_from_earlier_run"] == len(expected) and fixtures.shard_bytes(resumed) == expected


def test_rerun_verifies_finished_shards_against_the_summary(tree, reference, tmp_path):
    output_directory = str(tmp_path / "out")
    shutil.copytree(reference[0], output_directory)
    damaged = os.path.join(output_directory, "train-00001-of-00003")
    with open(damaged, "r+b") as shard:  # same size, different bytes: existence and size are not enough
        shard.seek(100)
        original = shard.read(1)
        shard.seek(100)
        shard.write(bytes([original[0] ^ 0xFF]))
    os.remove(os.path.join(output_directory, "validation-00000-of-00002"))
    summary = builder.build(config_for(tree, output_directory), log=io.StringIO())
    assert fixtures.shard_bytes(output_directory) == fixtures.shard_bytes(reference[0])
    assert summary["shards_reused_from_earlier_run"] == TRAIN_SHARDS + VALIDATION_SHARDS - 2
    assert summary["splits"] == reference[1]["splits"]


@pytest.mark.parametrize("change, message", [
    (dict(train_directory="/nonexistent/train"), "--train_directory /nonexistent/train does not exist"),
    (dict(validation_labels_file="short"), "has 8 labels but --validation_directory holds 9 images"),
    (dict(validation_labels_file="unknown"), "line 2: synset n09999999 is not among the classes"),
    (dict(train_directory="empty_class"), "holds no images; restore its images or remove the folder"),
    (dict(train_shards=1000), "--train_shards=1000 is more than the 26 train images"),
    (dict(output_directory="under_a_file"), "cannot write --output_directory"),
    (dict(max_bad_files=3), "4 bad files, more than --max_bad_files=3"),
    (dict(first_label=2), "--first_label must be 1"),
    (dict(train_tar="not_a_tar"), "give --train_directory or --train_tar, not both"),
])
def test_bad_input_gives_a_clear_error(tree, tmp_path, change, message):
    change = dict(change)
    labels = open(tree.validation_labels_file).read().splitlines()
    files = {
        "short": "\n".join(labels[:-1]),
        "unknown": "\n".join([labels[0], "n09999999"] + labels[2:]),
        "not_a_tar": "plain text",
    }
    for key, value in change.items():
        if value in files:
            (tmp_path / value).write_text(files[value])
            change[key] = str(tmp_path / value)
        elif value == "empty_class":
            shutil.copytree(tree.train_directory, tmp_path / "train")
            os.makedirs(tmp_path / "train" / "n01000004")
            change[key] = str(tmp_path / "train")
        elif value == "under_a_file":
            (tmp_path / "file").write_text("")
            change[key] = str(tmp_path / "file" / "out")
    output_directory = change.pop("output_directory", str(tmp_path / "out"))
    config = config_for(tree, output_directory, **change)
    with pytest.raises(PipelineError) as raised:
        builder.build(config, log=io.StringIO())
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_shards_of_another_build_in_the_output_directory_are_refused(tree, reference, tmp_path):
    shutil.copytree(reference[0], tmp_path / "out")
    with pytest.raises(PipelineError, match="train-00000-of-00003 from a build with another shard count"):
        builder.build(config_for(tree, str(tmp_path / "out"), train_shards=4), log=io.StringIO())


def test_command_line_errors_are_one_line_without_traceback(tree, tmp_path):
    process = _run_cli([f"--validation_directory={tree.validation_directory}", f"--labels_file={tree.labels_file}",
                        f"--output_directory={tmp_path}", "--validation_shards=1"])
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr.strip().splitlines() == [
        "error: --validation_directory holds flat images: give --validation_labels_file (one synset per line, "
        "in sorted file-name order)"]



def test_imagenet_shape_1000_classes_default_shard_counts_exact_and_summarized(tmp_path):
    """ImageNet's shape at a small size: 1,000 classes in a tar of 1,000 class tars, a flat validation
    folder with its label file, and the default 1,024 / 128 shards."""
    rng = np.random.default_rng(0)
    jpegs = [fixtures.encode(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(16)]
    synsets = [f"n{index:08d}" for index in range(1, 1001)]
    train, validation = tmp_path / "train", tmp_path / "validation"
    expected_train, bad = {}, {}
    for class_index, synset in enumerate(synsets):
        (train / synset).mkdir(parents=True)
        for number in range(3 if class_index < 40 else 2):
            name = f"{synset}_{number}.JPEG"
            expected_train[name] = (synset, jpegs[(class_index + number) % len(jpegs)])
            (train / synset / name).write_bytes(expected_train[name][1])
        if class_index % 400 == 7:  # 3 bad files, fewer than --max_bad_files
            bad[f"{synset}_bad.JPEG"] = synset
            (train / synset / f"{synset}_bad.JPEG").write_bytes(jpegs[0][:40])
    original_layout.make_train_tar(str(train), str(tmp_path / "train.tar"))
    validation.mkdir()
    expected_validation = {}
    for index in range(1001):
        name = f"ILSVRC2012_val_{index + 1:08d}.JPEG"
        expected_validation[name] = (synsets[index * 7 % 1000], jpegs[index % len(jpegs)])
        (validation / name).write_bytes(expected_validation[name][1])
    (tmp_path / "val_labels.txt").write_text("".join(synset + "\n" for synset, _ in expected_validation.values()))
    output = tmp_path / "out"
    summary = builder.build(builder.BuildConfig(
        output_directory=str(output), train_tar=str(tmp_path / "train.tar"), validation_directory=str(validation),
        validation_labels_file=str(tmp_path / "val_labels.txt")), log=io.StringIO())

    for split, expected, num_shards in (("train", expected_train, 1024), ("validation", expected_validation, 128)):
        paths = sorted(str(path) for path in output.glob(f"{split}-*"))
        assert [os.path.basename(path) for path in paths] == [f"{split}-{index:05d}-of-{num_shards:05d}"
                                                              for index in range(num_shards)]
        seen = {}
        for serialized in tf.data.TFRecordDataset(paths):
            feature = tf.train.Example.FromString(serialized.numpy()).features.feature
            name = feature["image/filename"].bytes_list.value[0].decode()
            assert name not in seen, f"{name} written twice"
            seen[name] = (feature["image/class/synset"].bytes_list.value[0].decode(),
                          feature["image/encoded"].bytes_list.value[0])
            assert feature["image/class/label"].int64_list.value == [synsets.index(seen[name][0]) + 1]
        assert seen == expected, split
        split_summary = summary["splits"][split]
        assert (split_summary["num_shards"], split_summary["shards_done"], split_summary["images_written"],
                split_summary["images_skipped"]) == (num_shards, num_shards, len(expected), len(bad) * (split == "train"))
        per_class = {synset: sum(1 for class_name, _ in expected.values() if class_name == synset) for synset in synsets}
        if split == "train":
            per_class.update({synset: per_class[synset] + 1 for synset in bad.values()})
        assert {synset: entry["images_found"] for synset, entry in split_summary["classes"].items()} == {
            synset: count for synset, count in per_class.items() if count}
        # Balanced: planned images (written + skipped) per shard differ by at most one.
        planned = [summary["shards"][os.path.basename(path)]["records"] + len(summary["shards"][os.path.basename(path)]["skipped"])
                   for path in paths]
        assert max(planned) - min(planned) <= 1
    assert summary["status"] == "complete" and summary["first_label"] == 1
    assert summary["classes"] == [{"label": index + 1, "name": synset, "text": synset}
                                  for index, synset in enumerate(synsets)]
    assert sorted(item["path"].rsplit("/", 1)[-1] for item in summary["skipped_files"]) == sorted(bad)
    for name, entry in summary["shards"].items():
        content = (output / name).read_bytes()
        assert (entry["bytes"], entry["sha256"]) == (len(content), hashlib.sha256(content).hexdigest())
    assert len(summary["shards"]) == 1152 and not (output / builder.JOURNAL_NAME).exists()
    with open(output / builder.SUMMARY_NAME) as summary_file:
        assert json.load(summary_file) == json.loads(json.dumps(summary))

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
