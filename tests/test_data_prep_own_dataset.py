"""data_prep on "your own" dataset: any class folder names, stray non-image files, and a seeded,
stratified validation split held out of the training images. Oracles: hand-counted layouts, TensorFlow's
own record reader, and the split rule recomputed here from its definition (sha256 ranks)."""

import csv
import hashlib
import io
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from data_prep import builder, file_kinds, holdout, inputs, original_layout
from official.utils.errors import PipelineError
from tests import data_prep_fixtures as fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRACTION, SEED = 0.25, 3
# Sorted by code point, so labels 1, 2, 3 (capitals sort before lower case).
NAMES = ("Golden Retriever", "café ☕", "daisy")
# floor(0.25 * n + 0.5) for n = 7, 4, 10 files with image names or image bytes (broken.jpg included).
HELD_OUT = {"Golden Retriever": 2, "café ☕": 1, "daisy": 3}
NON_IMAGE_KINDS = {".db": 1, ".json": 1, ".md": 1, ".txt": 1, "LICENSE": 1, "hidden file": 1,
                   "no extension (not image data)": 1}


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as output:
        output.write(data)


def make_own_dataset(root):
    """Writes root/train/<class>/... ; returns ({class: {relative path: True if usable}}, train dir)."""
    rng = np.random.default_rng(0)
    train = os.path.join(root, "train")

    def jpeg(colour):
        return fixtures.encode(fixtures.noisy_image(rng, colour, 18, 22), quality=90)

    images = {name: {} for name in NAMES}
    for i in range(6):
        images["Golden Retriever"][f"IMG {i:04d}.jpg"] = jpeg((200, 160, 40))
    images["Golden Retriever"]["broken.jpg"] = rng.bytes(500)  # an image name: a reported bad file
    for i in range(3):
        images["café ☕"][os.path.join("sub folder", f"tasse {i}.jpeg")] = jpeg((90, 60, 30))
    # An unknown extension with PNG bytes is an image (stored as a converted JPEG).
    images["café ☕"]["scan.dat"] = fixtures.encode(fixtures.noisy_image(rng, (90, 60, 30), 16, 16), "PNG")
    for i in range(10):
        images["daisy"][f"daisy_{i}.{'JPEG' if i % 2 else 'Jpg'}"] = jpeg((240, 240, 230))
    for name, files in images.items():
        for relative_path, data in files.items():
            _write(os.path.join(train, name, relative_path), data)
    strays = {
        os.path.join("Golden Retriever", "notes.md"): b"# where these came from\n",
        os.path.join("Golden Retriever", ".DS_Store"): b"\x00\x00\x00\x01Bud1" + bytes(100),
        os.path.join("Golden Retriever", "Thumbs.db"): bytes(64),
        os.path.join("café ☕", "LICENSE"): b"CC-BY 4.0\n",
        os.path.join("café ☕", "info"): b"taken in Lyon\n",
        os.path.join("café ☕", ".ipynb_checkpoints", "tasse 0.jpeg"): jpeg((0, 0, 0)),  # hidden folder
        os.path.join("daisy", "LICENSE.txt"): b"public domain\n",
        os.path.join("daisy", "labels.json"): b'{"daisy": 1}\n',
        ".DS_Store": bytes(16),  # top-level files are never looked at
    }
    for relative_path, data in strays.items():
        _write(os.path.join(train, relative_path), data)
    usable = {name: {path: path != "broken.jpg" for path in files} for name, files in images.items()}
    return usable, train


def config_for(train_directory, output_directory, **overrides):
    settings = dict(output_directory=output_directory, train_directory=train_directory,
                    validation_fraction=FRACTION, seed=SEED, train_shards=2, validation_shards=2, num_workers=1)
    settings.update(overrides)
    return builder.BuildConfig(**settings)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_own_dataset(str(tmp_path_factory.mktemp("own")))


@pytest.fixture(scope="module")
def built(dataset, tmp_path_factory):
    _, train = dataset
    output_directory = str(tmp_path_factory.mktemp("built"))
    log = io.StringIO()
    summary = builder.build(config_for(train, output_directory), log=log)
    return output_directory, summary, log.getvalue()


def records_by_split(output_directory):
    return {split: [record for shard in fixtures.read_shards(output_directory, split) for record in shard]
            for split in ("train", "validation")}


def read_holdout_list(output_directory):
    with open(os.path.join(output_directory, builder.HOLDOUT_LIST_NAME), encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["class", "path"]
    return [tuple(row) for row in rows[1:]]


def expected_held_out(usable, seed):
    """The split rule recomputed from its definition: per class, the k smallest sha256 ranks."""
    held_out = set()
    for name, files in usable.items():
        ranked = sorted(files, key=lambda path: hashlib.sha256(f"{seed}\0{name}\0{path}".encode()).hexdigest())
        held_out.update((name, path) for path in ranked[:HELD_OUT[name]])
    return held_out


def test_awkward_folder_names_become_synset_text_and_labels_and_every_image_lands_in_one_split(dataset, built):
    usable, _ = dataset
    output_directory, _, _ = built
    held_out = expected_held_out(usable, SEED)
    assert set(read_holdout_list(output_directory)) == held_out
    records = records_by_split(output_directory)
    for split, split_records in records.items():
        for record in split_records:
            name = record["image/class/synset"].decode()
            assert record["image/class/text"].decode() == name  # no metadata file: the folder name
            assert record["image/class/label"] == NAMES.index(name) + 1
    seen = {split: sorted((record["image/class/synset"].decode(), record["image/filename"].decode())
                          for record in split_records) for split, split_records in records.items()}
    expected = {"train": [], "validation": []}
    for name, files in usable.items():
        for path, ok in files.items():
            if ok:
                split = "validation" if (name, path) in held_out else "train"
                expected[split].append((name, os.path.basename(path)))
    assert seen == {split: sorted(pairs) for split, pairs in expected.items()}


def test_summary_names_counts_and_holdout_are_right(dataset, built):
    usable, _ = dataset
    output_directory, summary, log = built
    with open(os.path.join(output_directory, builder.SUMMARY_NAME), encoding="utf-8") as handle:
        written = json.load(handle)
    assert {key: value for key, value in written.items() if key != "elapsed_seconds"} == {
        key: value for key, value in json.loads(json.dumps(summary)).items() if key != "elapsed_seconds"}
    assert summary["status"] == "complete"
    assert summary["first_label"] == 1
    assert summary["classes"] == [{"label": 1, "name": "Golden Retriever", "text": "Golden Retriever"},
                                  {"label": 2, "name": "café ☕", "text": "café ☕"},
                                  {"label": 3, "name": "daisy", "text": "daisy"}]
    broken_held_out = ("Golden Retriever", "broken.jpg") in expected_held_out(usable, SEED)
    validation, train = summary["splits"]["validation"], summary["splits"]["train"]
    assert validation["images_found"] == 6 and train["images_found"] == 21 - 6
    assert validation["images_written"] == 6 - broken_held_out
    assert train["images_written"] == 15 - (not broken_held_out)
    records = records_by_split(output_directory)
    assert [len(records["train"]), len(records["validation"])] == [train["images_written"],
                                                                   validation["images_written"]]
    assert {name: entry["images_found"] for name, entry in validation["classes"].items()} == HELD_OUT
    assert {name: entry["images_found"] for name, entry in train["classes"].items()} == {
        "Golden Retriever": 5, "café ☕": 3, "daisy": 7}
    for split in (train, validation):
        assert {name: (entry["label"], entry["text"]) for name, entry in split["classes"].items()} == {
            name: (index + 1, name) for index, name in enumerate(NAMES)}
    assert train["non_image_files_skipped"] == 7 and train["non_image_files_by_kind"] == NON_IMAGE_KINDS
    assert {name: entry["non_image_files_skipped"] for name, entry in train["classes"].items()} == {
        "Golden Retriever": 3, "café ☕": 2, "daisy": 2}
    assert validation["non_image_files_skipped"] == 0
    assert [os.path.basename(item["path"]) for item in summary["skipped_files"]] == ["broken.jpg"]
    assert [os.path.basename(item["path"]) for item in summary["converted_files"]] == ["scan.dat"]
    list_path = os.path.join(output_directory, builder.HOLDOUT_LIST_NAME)
    with open(list_path, "rb") as handle:
        list_sha256 = hashlib.sha256(handle.read()).hexdigest()
    assert summary["validation_holdout"] == {"fraction": FRACTION, "seed": SEED, "images": 6,
                                             "file_list": builder.HOLDOUT_LIST_NAME,
                                             "file_list_sha256": list_sha256}
    assert summary["settings"]["validation_fraction"] == FRACTION
    # Non-image files are counted, never warned about; the one bad image is warned about once.
    assert [line for line in log.splitlines() if line.startswith("warning")] == [
        line for line in log.splitlines() if "warning: skipped" in line and "broken.jpg" in line]
    assert not any(stray in log for stray in ("notes.md", "Thumbs.db", "LICENSE.txt", "labels.json"))
    assert "7 non-image files left out" in log
    assert sorted(name for name in os.listdir(output_directory) if name.startswith(("train-", "validation-"))) == [
        "train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00002", "validation-00001-of-00002"]



class _InterruptedLog(io.StringIO):
    """A build log whose first line about the validation split is a Ctrl-C: the run has planned it
    and stops before writing it."""

    def write(self, text):
        if text.startswith("validation:"):
            raise KeyboardInterrupt
        return super().write(text)


def test_the_held_out_list_goes_only_when_a_validation_set_from_elsewhere_has_replaced_it(dataset, tmp_path):
    _, train = dataset
    output_directory = str(tmp_path / "out")
    builder.build(config_for(train, output_directory), log=io.StringIO())
    list_path = os.path.join(output_directory, builder.HOLDOUT_LIST_NAME)
    held_out = open(list_path, "rb").read()
    own_validation = config_for(train, output_directory, validation_fraction=None,
                                validation_directory=train)
    with pytest.raises(KeyboardInterrupt):
        builder.build(own_validation, log=_InterruptedLog())
    assert open(list_path, "rb").read() == held_out  # its validation shards are still there
    summary = builder.build(own_validation, log=io.StringIO())
    assert summary["status"] == "complete" and summary["validation_holdout"] is None
    assert not os.path.exists(list_path)

def test_split_is_seeded_independent_of_workers_and_input_form_and_a_rerun_reuses_it(dataset, built, tmp_path):
    usable, train = dataset
    reference_directory, reference, _ = built
    expected_shards = fixtures.shard_bytes(reference_directory)
    two_workers = str(tmp_path / "two_workers")
    summary = builder.build(config_for(train, two_workers, num_workers=2), log=io.StringIO())
    assert fixtures.shard_bytes(two_workers) == expected_shards
    assert read_holdout_list(two_workers) == read_holdout_list(reference_directory)
    assert summary["splits"] == reference["splits"]

    rerun = builder.build(config_for(train, two_workers), log=io.StringIO())
    assert rerun["shards_reused_from_earlier_run"] == 4
    assert fixtures.shard_bytes(two_workers) == expected_shards

    original_layout.make_train_tar(train, str(tmp_path / "train.tar"))
    from_tar = builder.build(config_for(None, str(tmp_path / "tar"), train_tar=str(tmp_path / "train.tar")),
                             log=io.StringIO())
    assert fixtures.shard_bytes(str(tmp_path / "tar")) == expected_shards
    assert read_holdout_list(str(tmp_path / "tar")) == read_holdout_list(reference_directory)
    for split in ("train", "validation"):
        assert from_tar["splits"][split]["non_image_files_by_kind"] == reference["splits"][split][
            "non_image_files_by_kind"]

    other_seed = builder.build(config_for(train, str(tmp_path / "seed4"), seed=SEED + 1), log=io.StringIO())
    other_held_out = set(read_holdout_list(str(tmp_path / "seed4")))
    assert other_held_out == expected_held_out(usable, SEED + 1) != expected_held_out(usable, SEED)
    assert {name: entry["images_found"] for name, entry in
            other_seed["splits"]["validation"]["classes"].items()} == HELD_OUT


def test_labels_file_with_spaces_and_a_byte_order_mark_and_metadata_texts(dataset, tmp_path):
    _, train = dataset
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("daisy\nGolden Retriever\ncafé ☕\n", encoding="utf-8-sig")
    metadata_file = tmp_path / "metadata.txt"
    metadata_file.write_text("café ☕\ta cup of coffee\nGolden Retriever\tdog, golden\ndaisy\tBellis perennis\n",
                             encoding="utf-8")
    summary = builder.build(config_for(train, str(tmp_path / "out"), labels_file=str(labels_file),
                                       imagenet_metadata_file=str(metadata_file), first_label=0),
                            log=io.StringIO())
    texts = {"daisy": "Bellis perennis", "Golden Retriever": "dog, golden", "café ☕": "a cup of coffee"}
    assert summary["first_label"] == 0
    assert summary["classes"] == [{"label": 0, "name": "daisy", "text": "Bellis perennis"},
                                  {"label": 1, "name": "Golden Retriever", "text": "dog, golden"},
                                  {"label": 2, "name": "café ☕", "text": "a cup of coffee"}]
    for split_records in records_by_split(str(tmp_path / "out")).values():
        for record in split_records:
            name = record["image/class/synset"].decode()
            assert record["image/class/text"].decode() == texts[name]
            assert record["image/class/label"] == ["daisy", "Golden Retriever", "café ☕"].index(name)


def test_held_out_count_follows_the_documented_rounding():
    # floor(f * n + 0.5), at least 1, at most n - 1.
    cases = {(2, 0.1): 1, (2, 0.9): 1, (3, 0.2): 1, (4, 0.25): 1, (7, 0.25): 2, (10, 0.25): 3, (10, 0.15): 2,
             (100, 0.1): 10, (1000, 0.05): 50, (9, 0.5): 5}
    assert {case: holdout.held_out_count(*case) for case in cases} == cases


def _sources(names):
    return [inputs.ImageSource(f"/data/{name}", "", 0, 1, 0, name) for name in names]


def test_split_ignores_listing_order_and_adding_an_image_moves_at_most_one_other():
    names = [f"img_{i:03d}.jpg" for i in range(40)]
    classes = {"a": _sources(names), "b": _sources(names[:5])}
    train, held_out = holdout.split_classes(classes, 0.2, seed=7)
    assert [len(held_out["a"]), len(held_out["b"])] == [8, 1]
    assert set(train["a"]).isdisjoint(held_out["a"]) and set(train["a"]) | set(held_out["a"]) == set(classes["a"])
    shuffled = {name: random.Random(1).sample(sources, len(sources)) for name, sources in classes.items()}
    assert {name: set(sources) for name, sources in holdout.split_classes(shuffled, 0.2, seed=7)[1].items()} == {
        name: set(sources) for name, sources in held_out.items()}
    before = {source.relative_path for source in held_out["a"]}
    for extra in range(40, 60):
        grown = holdout.split_classes({"a": _sources(names + [f"img_{extra:03d}.jpg"])}, 0.2, seed=7)[1]["a"]
        after = {source.relative_path for source in grown} - {f"img_{extra:03d}.jpg"}
        assert len(before ^ after) <= 1, extra


@pytest.mark.parametrize("name, kind", [
    ("n01440764_10026.JPEG", None), ("IMG_1.jpg", None), ("scan.TIFF", None), ("photo.heic", None),
    ("notes.txt", ".txt"), ("README.md", ".md"), ("meta.JSON", ".json"), ("Thumbs.db", ".db"),
    ("desktop.ini", ".ini"), (".DS_Store", "hidden file"), ("._IMG_1.jpg", "hidden file"),
    ("LICENSE", "LICENSE"), ("Copying", "Copying"),
])
def test_file_kinds_by_name(name, kind):
    assert file_kinds.non_image_kind(name, lambda: pytest.fail("the name decides")) == kind


@pytest.mark.parametrize("header, kind", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", None), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", None),
    (b"RIFF\x10\x00\x00\x00WEBP", None), (b"GIF89a\x01\x00", None), (None, None),  # unreadable: let a worker say
    (b"RIFF\x10\x00\x00\x00WAVE", ".bin (not image data)"), (b"hello world\n", ".bin (not image data)"),
])
def test_file_kinds_by_bytes_when_the_name_cannot_tell(header, kind):
    assert file_kinds.non_image_kind("blob.bin", lambda: header) == kind


def test_a_class_folder_of_only_non_image_files_is_an_error(tmp_path):
    os.makedirs(tmp_path / "train" / "tulip")
    (tmp_path / "train" / "tulip" / "README.txt").write_text("todo")
    (tmp_path / "train" / "daisy").mkdir()
    (tmp_path / "train" / "daisy" / "a.jpg").write_bytes(b"\xff\xd8\xff")  # never decoded: listing fails first
    with pytest.raises(PipelineError, match=r"class folder .*tulip under --train_directory holds no images"):
        builder.build(config_for(str(tmp_path / "train"), str(tmp_path / "out")), log=io.StringIO())


@pytest.mark.parametrize("change, message", [
    (dict(validation_directory="val"), "give --validation_fraction (hold out part of the training images) or "
                                       "--validation_directory/--validation_tar"),
    (dict(validation_tar="val.tar"), "or --validation_directory/--validation_tar (a separate validation set), "
                                     "not both"),
    (dict(validation_fraction=0.0), "--validation_fraction must be between 0 and 1"),
    (dict(validation_fraction=1.0), "--validation_fraction must be between 0 and 1"),
    (dict(train_directory=None, labels_file="labels.txt"), "--validation_fraction holds out part of the training "
                                                           "images: give --train_directory or --train_tar"),
    (dict(labels_file="labels_with_an_extra_class.txt"), "needs at least 2 images in every class (one to hold "
                                                         "out, one to train on), but 1 classes have fewer "
                                                         "(first: 'tulip' with 0)"),
    (dict(validation_fraction=0.5, train_directory="one_image_class"), "(first: 'only one' with 1)"),
    (dict(train_directory="not_utf8"), "has a name that is not valid UTF-8"),
    (dict(train_directory="decomposed_accent", labels_file="composed.txt"),
     "(first: 'cafe\u0301') (it differs from a line of --labels_file only in how accents are encoded"),
])
def test_bad_split_settings_give_a_clear_one_line_error(dataset, tmp_path, change, message):
    _, train = dataset
    change = dict(change)
    for key, value in change.items():
        if value == "one_image_class":
            os.makedirs(tmp_path / "train" / "only one")
            (tmp_path / "train" / "only one" / "x.jpg").write_bytes(b"\xff\xd8\xff")
            (tmp_path / "train" / "two").mkdir()
            for name in ("a.jpg", "b.jpg"):
                (tmp_path / "train" / "two" / name).write_bytes(b"\xff\xd8\xff")
            change[key] = str(tmp_path / "train")
        elif value == "not_utf8":
            os.makedirs(os.path.join(os.fsencode(tmp_path), b"train", b"caf\xe9"))
            (tmp_path / "train" / "caf\udce9" / "a.jpg").write_bytes(b"\xff\xd8\xff")
            change[key] = str(tmp_path / "train")
        elif value == "decomposed_accent":  # as macOS names folders
            os.makedirs(tmp_path / "train" / "cafe\u0301")
            (tmp_path / "train" / "cafe\u0301" / "a.jpg").write_bytes(b"\xff\xd8\xff")
            change[key] = str(tmp_path / "train")
        elif value == "composed.txt":
            (tmp_path / value).write_text("caf\u00e9\n", encoding="utf-8")
            change[key] = str(tmp_path / value)
        elif value in ("labels.txt", "labels_with_an_extra_class.txt"):
            extra = "tulip\n" if "extra" in value else ""
            (tmp_path / value).write_text("\n".join(NAMES) + "\n" + extra, encoding="utf-8")
            change[key] = str(tmp_path / value)
        elif isinstance(value, str):
            change[key] = str(tmp_path / value)
    with pytest.raises(PipelineError) as raised:
        builder.build(config_for(change.pop("train_directory", train), str(tmp_path / "out"), **change),
                      log=io.StringIO())
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_command_line_validation_fraction_error_is_one_line(dataset, tmp_path):
    _, train = dataset
    process = subprocess.run(
        [sys.executable, "-m", "data_prep.build_imagenet_data", f"--train_directory={train}",
         f"--validation_directory={train}", "--validation_fraction=0.1", f"--output_directory={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1
    assert process.stderr.strip().splitlines() == [
        "error: give --validation_fraction (hold out part of the training images) or "
        "--validation_directory/--validation_tar (a separate validation set), not both"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
