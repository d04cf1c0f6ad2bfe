"""A minimal port of the established ImageNet shard builder (tensorflow/models'
inception/data/build_imagenet_data.py), written here so that tests read shards made the way other tools
make them, with none of data_prep's code and no build_summary.json.

What is kept of the original: classes from a labels file in its order, labels 1..N (0 is left for the
background class), files shuffled with random.seed(12345) before sharding, shard ranges from
np.linspace, shard names `{split}-%05d-of-%05d`, and its 15-key tf.train.Example with image/class/text
from the synset-to-human map and boxes as (xmin, ymin, xmax, ymax) float lists.
"""

import glob
import io
import os
import random

import numpy as np
import tensorflow as tf
from PIL import Image


def _int64_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _float_feature(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _convert_to_example(filename, image_buffer, label, synset, human, bbox, height, width):
    """The original's _convert_to_example: bbox is a list of [xmin, ymin, xmax, ymax]."""
    xmin, ymin, xmax, ymax = ([box[i] for box in bbox] for i in range(4))
    return tf.train.Example(features=tf.train.Features(feature={
        "image/height": _int64_feature([height]),
        "image/width": _int64_feature([width]),
        "image/colorspace": _bytes_feature(b"RGB"),
        "image/channels": _int64_feature([3]),
        "image/class/label": _int64_feature([label]),
        "image/class/synset": _bytes_feature(synset.encode()),
        "image/class/text": _bytes_feature(human.encode()),
        "image/object/bbox/xmin": _float_feature(xmin),
        "image/object/bbox/xmax": _float_feature(xmax),
        "image/object/bbox/ymin": _float_feature(ymin),
        "image/object/bbox/ymax": _float_feature(ymax),
        "image/object/bbox/label": _int64_feature([label] * len(xmin)),
        "image/format": _bytes_feature(b"JPEG"),
        "image/filename": _bytes_feature(os.path.basename(filename).encode()),
        "image/encoded": _bytes_feature(image_buffer),
    }))


def find_image_files(data_dir, labels_file):
    """(filenames, synsets, labels) of data_dir/<synset>/*.JPEG, shuffled as the original does."""
    with open(labels_file) as handle:
        unique_labels = [line.strip() for line in handle if line.strip()]
    filenames, synsets, labels = [], [], []
    label_index = 1  # label 0 is left empty as the background class
    for synset in unique_labels:
        matching = glob.glob(os.path.join(data_dir, synset, "*.JPEG"))
        filenames.extend(matching)
        synsets.extend([synset] * len(matching))
        labels.extend([label_index] * len(matching))
        label_index += 1
    shuffled_index = list(range(len(filenames)))
    random.seed(12345)
    random.shuffle(shuffled_index)
    return ([filenames[i] for i in shuffled_index], [synsets[i] for i in shuffled_index],
            [labels[i] for i in shuffled_index])


def process_dataset(name, directory, num_shards, synset_to_human, labels_file, output_directory,
                    image_to_bboxes=None):
    """Writes `name`-*-of-`num_shards` shards; returns {synset: images written}."""
    filenames, synsets, labels = find_image_files(directory, labels_file)
    image_to_bboxes = image_to_bboxes or {}
    bounds = np.linspace(0, len(filenames), num_shards + 1).astype(int)
    for shard in range(num_shards):
        output_file = os.path.join(output_directory, "%s-%.5d-of-%.5d" % (name, shard, num_shards))
        with tf.io.TFRecordWriter(output_file) as writer:
            for i in range(bounds[shard], bounds[shard + 1]):
                with open(filenames[i], "rb") as handle:
                    image_buffer = handle.read()
                width, height = Image.open(io.BytesIO(image_buffer)).size
                example = _convert_to_example(
                    filenames[i], image_buffer, labels[i], synsets[i], synset_to_human[synsets[i]],
                    image_to_bboxes.get(os.path.basename(filenames[i]), []), height, width)
                writer.write(example.SerializeToString())
    counts = {}
    for synset in synsets:
        counts[synset] = counts.get(synset, 0) + 1
    return counts


def preprocess_validation(validation_dir, validation_labels_file):
    """The original preprocess_imagenet_validation_data.py: moves the flat validation images (sorted by
    name) into one folder per synset, the i-th image to the i-th line's synset."""
    with open(validation_labels_file) as handle:
        synsets = [line.strip() for line in handle if line.strip()]
    images = sorted(name for name in os.listdir(validation_dir)
                    if os.path.isfile(os.path.join(validation_dir, name)))
    for name, synset in zip(images, synsets):
        os.makedirs(os.path.join(validation_dir, synset), exist_ok=True)
        os.rename(os.path.join(validation_dir, name), os.path.join(validation_dir, synset, name))


def read_synset_to_human(metadata_file):
    with open(metadata_file) as handle:
        return dict(line.rstrip("\n").split("\t", 1) for line in handle if line.strip())
