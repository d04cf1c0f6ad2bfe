"""Small raw ImageNet-like trees for the data_prep tests, with every quirk the builder must handle."""

import dataclasses
import glob
import io
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

SYNSETS = ("n01000001", "n01000002", "n01000003")
TEXTS = {"n01000001": "red thing", "n01000002": "green thing, leafy", "n01000003": "blue thing"}
CLASS_COLOURS = {"n01000001": (200, 30, 30), "n01000002": (30, 200, 30), "n01000003": (30, 30, 200)}
CMYK_RED = (0, 255, 255, 0)  # full magenta + yellow, no black: pure red (255, 0, 0) in RGB


@dataclasses.dataclass
class ExpectedImage:
    synset: str
    height: int
    width: int
    kind: str                  # "rgb" (stored byte-for-byte), "png", "cmyk", "gray"
    source_bytes: bytes
    boxes: tuple = ()
    rgb_reference: np.ndarray = None   # pixels the record must decode to (approximately, for conversions)


@dataclasses.dataclass
class RawTree:
    root: str
    train_directory: str
    validation_directory: str
    validation_labels_file: str
    labels_file: str
    metadata_file: str
    bounding_box_file: str
    good_train: dict           # file name → ExpectedImage
    good_validation: dict
    bad_train: dict            # file name → expected reason fragment


def noisy_image(rng, colour, height, width):
    base = np.array(colour, dtype=np.int16)[None, None, :]
    noise = rng.integers(-25, 26, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(array, format_name="JPEG", mode=None, **options):
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    output = io.BytesIO()
    image.save(output, format=format_name, **options)
    return output.getvalue()


def huge_dimension_jpeg(small_jpeg, height=60000, width=60000):
    """A valid small JPEG whose SOF0 header claims a gigantic size (a decompression bomb)."""
    data = bytearray(small_jpeg)
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as output:
        output.write(data)


def make_raw_tree(root, images_per_class=6, validation_per_class=3, seed=0, quirks=True):
    """Writes train/<synset>/..., a flat val/ with labels, labels, metadata and a box CSV under `root`."""
    rng = np.random.default_rng(seed)
    train_directory = os.path.join(root, "train")
    validation_directory = os.path.join(root, "val")
    good_train, good_validation, bad_train = {}, {}, {}
    box_lines = []
    for class_index, synset in enumerate(SYNSETS):
        colour = CLASS_COLOURS[synset]
        for i in range(images_per_class):
            height, width = 24 + 2 * i + class_index, 32 + 3 * i
            pixels = noisy_image(rng, colour, height, width)
            name = f"{synset}_{i}.JPEG"
            data = encode(pixels, quality=90)
            _write(os.path.join(train_directory, synset, name), data)
            boxes = ()
            if i % 2 == 0:
                boxes = ((0.1, 0.2, 0.5, 0.6),) if i % 4 == 0 else ((0.0, 0.0, 1.0, 1.0), (0.25, 0.25, 0.75, 0.5))
                box_lines.extend(f"{name},{b[0]:.4f},{b[1]:.4f},{b[2]:.4f},{b[3]:.4f}" for b in boxes)
            good_train[name] = ExpectedImage(synset, height, width, "rgb", data, boxes)
    if quirks:
        png_pixels = noisy_image(rng, CLASS_COLOURS["n01000001"], 20, 30)
        png_bytes = encode(png_pixels, "PNG")
        _write(os.path.join(train_directory, "n01000001", "n01000001_png.JPEG"), png_bytes)
        good_train["n01000001_png.JPEG"] = ExpectedImage("n01000001", 20, 30, "png", png_bytes,
                                                         rgb_reference=png_pixels)
        cmyk = np.zeros((16, 24, 4), np.uint8) + np.array(CMYK_RED, np.uint8)
        cmyk_bytes = encode(cmyk, mode="CMYK", quality=95)
        _write(os.path.join(train_directory, "n01000002", "n01000002_cmyk.JPEG"), cmyk_bytes)
        red = np.zeros((16, 24, 3), np.uint8) + np.array((255, 0, 0), np.uint8)
        good_train["n01000002_cmyk.JPEG"] = ExpectedImage("n01000002", 16, 24, "cmyk", cmyk_bytes,
                                                          rgb_reference=red)
        gray = np.full((18, 22), 77, np.uint8)
        gray_bytes = encode(gray, mode="L", quality=95)
        _write(os.path.join(train_directory, "n01000002", "n01000002_gray.JPEG"), gray_bytes)
        good_train["n01000002_gray.JPEG"] = ExpectedImage("n01000002", 18, 22, "gray", gray_bytes,
                                                          rgb_reference=np.stack([gray] * 3, axis=-1))
        odd_name = "n01000003 ünïcödé name (copy).JPEG"
        odd_bytes = encode(noisy_image(rng, CLASS_COLOURS["n01000003"], 26, 20), quality=90)
        _write(os.path.join(train_directory, "n01000003", "sub folder ✓", odd_name), odd_bytes)
        good_train[odd_name] = ExpectedImage("n01000003", 26, 20, "rgb", odd_bytes)

        some_jpeg = good_train["n01000001_0.JPEG"].source_bytes
        bad = {
            ("n01000001", "n01000001_empty.JPEG"): (b"", "empty file"),
            ("n01000002", "n01000002_truncated.JPEG"): (some_jpeg[:len(some_jpeg) * 4 // 5], "truncated or corrupt"),
            ("n01000003", "n01000003_garbage.JPEG"): (rng.bytes(3000), "unknown image format"),
            ("n01000001", "n01000001_huge.JPEG"): (huge_dimension_jpeg(some_jpeg), "image too large"),
        }
        for (synset, name), (data, reason) in bad.items():
            _write(os.path.join(train_directory, synset, name), data)
            bad_train[name] = reason

    validation_labels = []
    index = 0
    for i in range(validation_per_class):
        for synset in SYNSETS[::-1] if i % 2 else SYNSETS:
            index += 1
            height, width = 20 + index, 28
            data = encode(noisy_image(rng, CLASS_COLOURS[synset], height, width), quality=90)
            name = f"ILSVRC2012_val_{index:08d}.JPEG"
            _write(os.path.join(validation_directory, name), data)
            validation_labels.append(synset)
            good_validation[name] = ExpectedImage(synset, height, width, "rgb", data)

    paths = {name: os.path.join(root, name) for name in
             ("val_labels.txt", "synsets.txt", "metadata.txt", "boxes.csv")}
    with open(paths["val_labels.txt"], "w") as output:
        output.write("\n".join(validation_labels) + "\n")
    with open(paths["synsets.txt"], "w") as output:
        output.write("\n".join(SYNSETS) + "\n")
    with open(paths["metadata.txt"], "w") as output:
        output.write("n00000999\tunused class\n")
        output.writelines(f"{synset}\t{TEXTS[synset]}\n" for synset in SYNSETS)
    with open(paths["boxes.csv"], "w") as output:
        output.write("\n".join(box_lines) + "\n")
    return RawTree(root, train_directory, validation_directory, paths["val_labels.txt"], paths["synsets.txt"],
                   paths["metadata.txt"], paths["boxes.csv"], good_train, good_validation, bad_train)


FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/colorspace": tf.io.FixedLenFeature([], tf.string),
    "image/channels": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/class/synset": tf.io.FixedLenFeature([], tf.string),
    "image/class/text": tf.io.FixedLenFeature([], tf.string),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/label": tf.io.VarLenFeature(tf.int64),
}


def read_shards(directory, split):
    """[[record dict, ...] per shard] in shard order, parsed by TensorFlow."""
    shards = []
    for path in sorted(glob.glob(os.path.join(directory, f"{split}-*"))):
        records = []
        for serialized in tf.data.TFRecordDataset(path):
            parsed = tf.io.parse_single_example(serialized, FEATURES)
            record = {key: (tf.sparse.to_dense(value).numpy().tolist() if isinstance(value, tf.SparseTensor)
                            else value.numpy()) for key, value in parsed.items()}
            records.append(record)
        shards.append(records)
    return shards


def shard_bytes(directory):
    """{shard name: bytes} for every train and validation shard in `directory`."""
    result = {}
    for path in sorted(glob.glob(os.path.join(directory, "train-*")) + glob.glob(os.path.join(directory, "validation-*"))):
        with open(path, "rb") as shard:
            result[os.path.basename(path)] = shard.read()
    return result


def vouched_shards(output_directory):
    """{shard name: entry} that the summary and the journal of finished shards vouch for, read as a
    resuming build must: whole lines of the journal only, later lines winning."""
    shards = {}
    try:
        with open(os.path.join(output_directory, "build_summary.json")) as summary_file:
            shards.update(json.load(summary_file)["shards"])
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(output_directory, "build_journal.jsonl")) as journal_file:
            for line in journal_file:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # torn by a kill: not vouched for
                shards[entry.pop("shard")] = entry
    except OSError:
        pass
    return shards
