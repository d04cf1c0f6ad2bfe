"""Small ImageNet-schema TFRecords written by hand (tf.train.Example, images encoded with PIL).

The schema is the one of docs/DESIGN.md §3, written field by field here so that tests check the
readers against the established format rather than against our own writer.
"""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image


def encode_image(pixels, image_format="JPEG", quality=95):
    """uint8 array [h, w, 3] (or [h, w] grayscale) -> encoded bytes, by PIL."""
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format == "JPEG" else {}
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def random_photo(rng, height, width):
    """A smooth random colour image (JPEG-friendly, unlike white noise): uint8 [h, w, 3]."""
    coarse = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def make_example(encoded, label, height, width, bboxes=(), image_format="JPEG",
                 synset="n01440764", text="tench, Tinca tinca", filename="n01440764_10026.JPEG"):
    """One serialized tf.train.Example with the established ImageNet fields.

    bboxes: iterable of (ymin, xmin, ymax, xmax) relative boxes.
    """
    bboxes = list(bboxes)
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([image_format.encode()]),
        "image/colorspace": _bytes([b"RGB"]),
        "image/channels": _ints([3]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/class/label": _ints([label]),
        "image/class/synset": _bytes([synset.encode()]),
        "image/class/text": _bytes([text.encode()]),
        "image/filename": _bytes([filename.encode()]),
        "image/object/bbox/ymin": _floats([b[0] for b in bboxes]),
        "image/object/bbox/xmin": _floats([b[1] for b in bboxes]),
        "image/object/bbox/ymax": _floats([b[2] for b in bboxes]),
        "image/object/bbox/xmax": _floats([b[3] for b in bboxes]),
        "image/object/bbox/label": _ints([label] * len(bboxes)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(directory, split, examples, num_shards, indexes=None):
    """Writes serialized `examples` round-robin into `{split}-%05d-of-%05d` files, the shards
    `indexes` of the `num_shards` (all by default, so a set may be left incomplete); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, "%s-%05d-of-%05d" % (split, i, num_shards))
             for i in (range(num_shards) if indexes is None else indexes)]
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    for index, example in enumerate(examples):
        writers[index % len(writers)].write(example)
    for writer in writers:
        writer.close()
    return paths


def write_labelled_split(directory, split, labels, num_shards, height=40, width=48, seed=0):
    """Writes one small JPEG per entry of `labels` into `num_shards` shards; returns the paths."""
    rng = np.random.default_rng(seed)
    examples = [
        make_example(encode_image(random_photo(rng, height, width)), label, height, width,
                     filename="img_%05d.JPEG" % index)
        for index, label in enumerate(labels)]
    return write_shards(directory, split, examples, num_shards)


def write_label_per_shard_splits(directory, num_shards):
    """Training shards in which shard i holds only label i (32 records in all), and one validation
    shard of 5 records: the labels a worker trains on say which files it read."""
    # write_shards deals records out round-robin: record i goes to shard i % num_shards.
    write_labelled_split(directory, "train", [i % num_shards for i in range(32)], num_shards)
    write_labelled_split(directory, "validation", [i % num_shards for i in range(5)], 1)
