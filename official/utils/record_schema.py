"""The shards and records of docs/DESIGN.md §3 and the one rule every reader applies to them.

Training, evaluation, evaluate_saved_model, verify_shards and data_prep.describe_shards all call
`record_problem` on each serialized record before using it, so that what verify_shards passes is
exactly what training reads. TensorFlow's own parser is not the rule: it quotes the raw bytes of a
record that is not an Example (which Python then fails to decode, hiding the shard), and it accepts
box lists of different lengths that only fail later, unnamed, in the crop.
"""

import os
import re
import stat
from typing import Optional

from google.protobuf.message import DecodeError
import tensorflow as tf

from official.utils.errors import PipelineError

# The names data_prep and the established tools give shards (docs/DESIGN.md §3.1); a copy with a
# suffix or a temporary file matching the glob is not a shard.
SHARD_NAME = re.compile(r"^(train|validation)-(\d+)-of-(\d+)$")

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
SYNSET_KEY = "image/class/synset"
TEXT_KEY = "image/class/text"
BOX_KEYS = tuple("image/object/bbox/" + edge for edge in ("ymin", "xmin", "ymax", "xmax"))

# The fields readers use and the kind of list each holds (a tf.train.Feature oneof name).
_KINDS = {IMAGE_KEY: "bytes_list", LABEL_KEY: "int64_list", SYNSET_KEY: "bytes_list",
          TEXT_KEY: "bytes_list", **{key: "float_list" for key in BOX_KEYS}}
_REQUIRED_SINGLE = (IMAGE_KEY, LABEL_KEY)  # exactly one value each
_OPTIONAL_SINGLE = (SYNSET_KEY, TEXT_KEY)  # none or one value each

LABEL_PROBLEM = "image/class/label"  # how every label-range problem starts


def check_regular_file(path):
    """Raises PipelineError when the local `path` named like a shard is not a regular file (reading
    a FIFO would wait forever, a directory fails unnamed)."""
    if "://" in path:
        return
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise PipelineError(f"{path} cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise PipelineError(f"{path} is named like a shard but is {kind}: move it out of the "
                            "directory of shards")


class LabelRange:
    """The labels a reader accepts, [first, first + count)."""

    def __init__(self, first, count):
        self.first, self.count = int(first), int(count)

    def __contains__(self, label):
        return self.first <= label < self.first + self.count

    def __str__(self):
        return f"{self.first}..{self.first + self.count - 1}"


def _values(feature):
    kind = feature.WhichOneof("kind")
    return kind, (list(getattr(feature, kind).value) if kind else [])


def parse(serialized):
    """(tf.train.Example, None), or (None, problem) for bytes that do not fit the schema's types."""
    try:
        example = tf.train.Example.FromString(bytes(serialized))
    except (DecodeError, RuntimeError, ValueError):
        return None, "not a tf.train.Example (the bytes do not parse as one)"
    features = example.features.feature
    for key, kind in _KINDS.items():
        if key in features:
            found, values = _values(features[key])
            if values and found != kind:
                return None, f"{key} holds a {found.split('_')[0]} list, the schema says {kind.split('_')[0]}"
    return example, None


def record_problem(serialized, labels: Optional[LabelRange] = None):
    """What makes one serialized record unreadable for training or evaluation, or None.

    Args:
      serialized: the record's bytes.
      labels: the accepted labels (from the flags or build_summary.json); None accepts any.
    """
    example, problem = parse(serialized)
    if problem:
        return problem
    features = example.features.feature
    for key in _REQUIRED_SINGLE:
        count = len(_values(features[key])[1]) if key in features else 0
        if count != 1:
            return f"{key} holds {count} values, the schema says exactly 1"
    for key in _OPTIONAL_SINGLE:
        if key in features and len(_values(features[key])[1]) > 1:
            return f"{key} holds {len(_values(features[key])[1])} values, the schema says at most 1"
    lengths = [len(_values(features[key])[1]) if key in features else 0 for key in BOX_KEYS]
    if len(set(lengths)) > 1:
        return ("bounding boxes have edge lists of different lengths ("
                + ", ".join(f"{key.rsplit('/', 1)[1]} {n}" for key, n in zip(BOX_KEYS, lengths)) + ")")
    label = features[LABEL_KEY].int64_list.value[0]
    if labels is not None and label not in labels:
        return f"{LABEL_PROBLEM} {label} is outside the labels {labels}"
    return None


def single_bytes(example, key):
    """The one bytes value of `key` in a checked Example, b"" when absent."""
    values = _values(example.features.feature[key])[1] if key in example.features.feature else []
    return values[0] if values else b""
