"""What each shard holds, as plain picklable data shared by the build process and its workers.

No TensorFlow here: the build process plans and collects results, workers write (see shard_writer).
"""

import dataclasses
import hashlib
import random
import typing

from data_prep.inputs import ImageSource

# Bump when the bytes written for the same inputs change, so finished shards of older builds are redone.
RECORD_FORMAT_VERSION = 1


# Slots: the build process holds one per image (1.28 million for ImageNet).
@dataclasses.dataclass(frozen=True, slots=True)
class ShardEntry:
    source: ImageSource
    label: int
    synset: str
    text: str
    boxes: typing.Tuple[typing.Tuple[float, float, float, float], ...]


@dataclasses.dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    num_shards: int
    entries: typing.Tuple[ShardEntry, ...]
    output_directory: str
    max_pixels: int
    plan_digest: str
    # The summary's record of this shard from an earlier run with the same plan, or None.
    previous: typing.Optional[dict]

    @property
    def name(self):
        return shard_name(self.split, self.index, self.num_shards)


@dataclasses.dataclass
class ShardResult:
    name: str
    records: int
    bytes: int
    sha256: str
    plan_digest: str
    skipped: list      # [path, synset, reason]
    converted: list    # [path, conversion]
    reused: bool
    stage_seconds: dict

    def summary_entry(self):
        """What the summary keeps per shard (and what a later run verifies before reusing the shard)."""
        return {"records": self.records, "bytes": self.bytes, "sha256": self.sha256,
                "plan_digest": self.plan_digest, "skipped": self.skipped, "converted": self.converted}


def shard_name(split, index, num_shards):
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def incomplete_name(name):
    # Leading dot and prefix: never matched by readers' `train-*` patterns while being written.
    return f".incomplete.{name}"


def shuffled(entries, seed):
    """A seeded shuffle across all classes (never leave shards class-sorted)."""
    order = list(entries)
    random.Random(seed).shuffle(order)
    return order


def shard_bounds(num_entries, num_shards):
    """[(start, end)] splitting num_entries into num_shards runs whose sizes differ by at most one."""
    return [(index * num_entries // num_shards, (index + 1) * num_entries // num_shards)
            for index in range(num_shards)]


def plan_digest(split, index, num_shards, entries, max_pixels):
    """Identifies everything that determines a shard's bytes, to decide whether a finished shard is reusable."""
    digest = hashlib.sha256(f"{RECORD_FORMAT_VERSION}\0{split}\0{index}\0{num_shards}\0{max_pixels}".encode())
    for entry in entries:
        digest.update(f"\n{entry.source.identity()}\0{entry.label}\0{entry.synset}\0{entry.text}\0"
                      f"{entry.boxes!r}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
