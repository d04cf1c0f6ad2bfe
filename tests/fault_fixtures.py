"""Damage done to files on purpose by the fault-injection tests, and snapshots to prove that a failed
run changed nothing."""

import os

import tensorflow as tf

# Frame of a TFRecord: length (8 bytes) and its CRC (4) before the data, the data's CRC (4) after.
FRAME_BEFORE, FRAME_AFTER = 12, 4


def record_spans(path):
    """[(start, end)] byte offsets of each record's frame in a TFRecord file, from the data lengths
    (an oracle independent of TensorFlow's reader)."""
    spans, start = [], 0
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        end = start + FRAME_BEFORE + len(record) + FRAME_AFTER
        spans.append((start, end))
        start = end
    return spans


def corrupt(path, kind, record_index):
    """Damages record `record_index` of the shard at `path` the way `kind` says."""
    spans = record_spans(path)
    start, end = spans[record_index]
    data = bytearray(open(path, "rb").read())
    if kind == "truncated":
        data = data[:(start + end) // 2]
    elif kind == "bit_flip":
        data[(start + end) // 2] ^= 0x10
    elif kind == "bad_jpeg_valid_crc":
        # The JPEG's header zeroed after its start marker: still "a JPEG" by its first bytes, but
        # every decoder (whole image, any crop window, header only) fails on it.
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        example = tf.train.Example.FromString(records[record_index])
        encoded = example.features.feature["image/encoded"].bytes_list.value
        encoded[0] = encoded[0][:3] + bytes(197) + encoded[0][200:]
        records[record_index] = example.SerializeToString()
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
        return
    with open(path, "wb") as handle:
        handle.write(bytes(data))


def snapshot(directory):
    """{relative path: bytes} of every file below `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, directory)] = handle.read()
    return files
