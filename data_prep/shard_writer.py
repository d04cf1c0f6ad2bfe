"""Writes one shard: reads, verifies or converts each image, serializes tf.train.Examples, writes a
TFRecord file under a temporary name and renames it when complete. Runs in worker processes."""

import hashlib
import os

# Every bad image gets our own one-line warning; TensorFlow's C++ error log would repeat it noisily.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf  # noqa: E402 (must follow the log level)

from data_prep.image_coding import BadImageError, prepare_image
from data_prep.inputs import read_image_bytes
from data_prep.shard_plan import ShardResult, incomplete_name
from official.utils.errors import PipelineError
from official.utils.progress import StageTimes

_HASH_CHUNK_BYTES = 1 << 20

# One worker process per core: TensorFlow's own thread pools would only oversubscribe the cores.
try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:
    pass  # TensorFlow already ran in this process (an in-process build): its settings are fixed.


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _float_feature(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def make_example(entry, prepared):
    """The tf.train.Example of docs/DESIGN.md §3 (the established ImageNet TFRecord schema)."""
    boxes = entry.boxes
    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": _bytes_feature(prepared.jpeg),
        "image/format": _bytes_feature(b"JPEG"),
        "image/colorspace": _bytes_feature(b"RGB"),
        "image/channels": _int64_feature([3]),
        "image/height": _int64_feature([prepared.height]),
        "image/width": _int64_feature([prepared.width]),
        "image/class/label": _int64_feature([entry.label]),
        "image/class/synset": _bytes_feature(entry.synset.encode("utf-8")),
        "image/class/text": _bytes_feature(entry.text.encode("utf-8")),
        "image/filename": _bytes_feature(os.fsencode(entry.source.file_name)),
        "image/object/bbox/xmin": _float_feature([box[0] for box in boxes]),
        "image/object/bbox/ymin": _float_feature([box[1] for box in boxes]),
        "image/object/bbox/xmax": _float_feature([box[2] for box in boxes]),
        "image/object/bbox/ymax": _float_feature([box[3] for box in boxes]),
        "image/object/bbox/label": _int64_feature([entry.label] * len(boxes)),
    }))


def _sha256_of(descriptor):
    digest = hashlib.sha256()
    while True:
        chunk = os.read(descriptor, _HASH_CHUNK_BYTES)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def _matches_previous(path, previous):
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.fstat(descriptor).st_size == previous["bytes"] and _sha256_of(descriptor) == previous["sha256"]
    finally:
        os.close(descriptor)


def _write_records(task, path, stage_times):
    skipped, converted = [], []
    records = 0
    open_tars = {}
    try:
        with tf.io.TFRecordWriter(path) as writer:
            for entry in task.entries:
                source = entry.source
                try:
                    with stage_times.stage("read"):
                        data = read_image_bytes(source, open_tars)
                    prepared = prepare_image(data, task.max_pixels, stage_times)
                except OSError as error:
                    skipped.append([source.display_path, entry.synset, f"unreadable ({error.strerror or error})"])
                    continue
                except BadImageError as error:
                    skipped.append([source.display_path, entry.synset, str(error)])
                    continue
                if prepared.conversion:
                    converted.append([source.display_path, prepared.conversion])
                with stage_times.stage("serialize"):
                    record = make_example(entry, prepared).SerializeToString(deterministic=True)
                with stage_times.stage("write"):
                    writer.write(record)
                records += 1
    finally:
        for descriptor in open_tars.values():
            os.close(descriptor)
    return records, skipped, converted


def write_shard(task):
    """Builds `task`'s shard (or reuses the finished one the summary vouches for); returns a ShardResult."""
    final_path = os.path.join(task.output_directory, task.name)
    if task.previous is not None and _matches_previous(final_path, task.previous):
        return ShardResult(task.name, task.previous["records"], task.previous["bytes"], task.previous["sha256"],
                           task.plan_digest, task.previous["skipped"], task.previous["converted"],
                           reused=True, stage_seconds={})
    stage_times = StageTimes()
    temporary_path = os.path.join(task.output_directory, incomplete_name(task.name))
    try:
        records, skipped, converted = _write_records(task, temporary_path, stage_times)
        with stage_times.stage("write"):
            descriptor = os.open(temporary_path, os.O_RDONLY)
            try:
                # Durable before the rename makes it final: a crash never leaves a short file under that name.
                os.fsync(descriptor)
                size = os.fstat(descriptor).st_size
                sha256 = _sha256_of(descriptor)
            finally:
                os.close(descriptor)
            # The folder is fsynced once, before the complete summary: until then a rename lost to a crash
            # only means that shard is built again.
            os.replace(temporary_path, final_path)
    except (OSError, tf.errors.OpError) as error:
        message = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
        raise PipelineError(f"writing {temporary_path} failed: {message}; check free space and permissions "
                            f"of --output_directory") from None
    return ShardResult(task.name, records, size, sha256, task.plan_digest, skipped, converted,
                       reused=False, stage_seconds=dict(stage_times.seconds))
