"""Benchmark of data_prep.build_imagenet_data (run by hand; prints figures, asserts nothing).

    .venv/bin/python benchmarks/bench_build_imagenet_data.py [--images=2000 --workers=2]

Builds shards from a generated tree of ImageNet-like JPEGs (~500x375, quality 90, photo content) with 1
and with N workers from folders, and with N workers from the original tar layout, all in one run, and
prints images/s, the scaling ratio and where a worker's time goes (read, verify, convert, serialize, write).
Then, in alternating rounds, N workers against the established builder's approach (tensorflow/models'
inception/data/build_imagenet_data.py, re-implemented below: N threads sharing one TensorFlow session
that fully decodes every JPEG to learn its size), wall clock including our workers' start-up.
"""

import argparse
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image
from skimage import data as sample_photos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from data_prep import builder  # noqa: E402
from data_prep import original_layout  # noqa: E402
from data_prep import shard_plan  # noqa: E402
from data_prep.image_coding import PreparedImage  # noqa: E402
from data_prep.inputs import ImageSource  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "cat")
NUM_CLASSES = 10


def _shard_bytes(directory):
    """{shard name: bytes} of every shard in `directory`."""
    result = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith(("train-", "validation-")):
            with open(os.path.join(directory, name), "rb") as shard:
                result[name] = shard.read()
    return result


def realistic_jpeg(photo, rng):
    """A random crop of a sample photo resized to an ImageNet-typical size, with sensor-like noise."""
    height, width = photo.shape[:2]
    crop_h, crop_w = int(height * rng.uniform(0.5, 1)), int(width * rng.uniform(0.5, 1))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    size = (500, 375) if rng.random() < 0.75 else (375, 500)
    image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize(size, Image.BILINEAR)
    pixels = np.clip(np.asarray(image, np.int16) + rng.integers(-14, 15, size=(size[1], size[0], 3)), 0, 255)
    output = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(output, format="JPEG", quality=90)
    return output.getvalue()


def make_tree(root, num_images, seed=0):
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.fromarray(getattr(sample_photos, name)()).convert("RGB")) for name in PHOTOS]
    total_bytes = 0
    for index in range(num_images):
        synset = f"n{index % NUM_CLASSES + 1:08d}"
        os.makedirs(os.path.join(root, "train", synset), exist_ok=True)
        jpeg = realistic_jpeg(photos[index % len(photos)], rng)
        total_bytes += len(jpeg)
        with open(os.path.join(root, "train", synset, f"{synset}_{index}.JPEG"), "wb") as image_file:
            image_file.write(jpeg)
    original_layout.make_train_tar(os.path.join(root, "train"), os.path.join(root, "train.tar"))
    return total_bytes / num_images


def worker_start_seconds():
    """What a build pays once to start its workers: the fork server's import of TensorFlow (a fresh
    process); the workers are then forked from it in milliseconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import data_prep.shard_writer"], cwd=REPO, check=True,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def timed_build(root, output, num_workers, shards, use_tar=False):
    shutil.rmtree(output, ignore_errors=True)
    config = builder.BuildConfig(output_directory=output, train_shards=shards, num_workers=num_workers,
                                 progress_interval=1e9, train_directory=None if use_tar else os.path.join(root, "train"),
                                 train_tar=os.path.join(root, "train.tar") if use_tar else None)
    os.sync()
    start = time.perf_counter()
    summary = builder.build(config, log=io.StringIO())
    return time.perf_counter() - start, summary


class EstablishedImageCoder:
    """The established builder's ImageCoder: one graph and session shared by every thread; decode_jpeg
    decodes the whole image (to learn its height and width)."""

    def __init__(self):
        import tensorflow as tf
        graph = tf.Graph()
        with graph.as_default():
            self._data = tf.compat.v1.placeholder(dtype=tf.string)
            self._decode = tf.image.decode_jpeg(self._data, channels=3)
        self._session = tf.compat.v1.Session(graph=graph)

    def decode_jpeg(self, data):
        image = self._session.run(self._decode, feed_dict={self._data: data})
        assert len(image.shape) == 3 and image.shape[2] == 3
        return image


def established_build(train_directory, output_directory, num_shards, num_threads):
    """The established builder's flow: files listed per class in label order, shuffled with
    random.seed(12345), split into one range per thread (np.linspace), each thread writing its shards
    one after the other. The Example is built by data_prep's make_example (the same 15-key schema)."""
    import tensorflow as tf
    from data_prep.shard_writer import make_example
    os.makedirs(output_directory, exist_ok=True)
    synsets = sorted(os.listdir(train_directory))
    files = [(os.path.join(train_directory, synset, name), label, synset)
             for label, synset in enumerate(synsets, start=1)
             for name in sorted(os.listdir(os.path.join(train_directory, synset)))]
    random.seed(12345)
    random.shuffle(files)
    coder = EstablishedImageCoder()
    thread_bounds = np.linspace(0, len(files), num_threads + 1).astype(int)
    shards_per_thread = num_shards // num_threads

    def process_range(thread_index):
        start, end = thread_bounds[thread_index], thread_bounds[thread_index + 1]
        shard_bounds = np.linspace(start, end, shards_per_thread + 1).astype(int)
        for shard_in_thread in range(shards_per_thread):
            shard = thread_index * shards_per_thread + shard_in_thread
            path = os.path.join(output_directory, f"train-{shard:05d}-of-{num_shards:05d}")
            with tf.io.TFRecordWriter(path) as writer:
                for file_path, label, synset in files[shard_bounds[shard_in_thread]:shard_bounds[shard_in_thread + 1]]:
                    with tf.io.gfile.GFile(file_path, "rb") as image_file:
                        data = image_file.read()
                    height, width, _ = coder.decode_jpeg(data).shape
                    entry = shard_plan.ShardEntry(ImageSource(file_path, "", 0, len(data), 0, ""), label, synset,
                                                  synset, ())
                    writer.write(make_example(entry, PreparedImage(data, height, width, "")).SerializeToString())

    threads = [threading.Thread(target=process_range, args=(index,)) for index in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _timed_command(arguments):
    start = time.perf_counter()
    subprocess.run([sys.executable] + arguments, cwd=REPO, check=True, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return time.perf_counter() - start


def compare_with_established(root, num_images, num_workers, shards, rounds):
    """Alternating rounds of our N-worker build and the established N-thread build of the same folders, each
    a fresh process as users run them (so each pays its TensorFlow import once per process)."""
    ours, established = [], []
    train = os.path.join(root, "train")
    for _ in range(rounds):
        for output, seconds, arguments in (
                ("ours", ours, ["-m", "data_prep.build_imagenet_data", f"--train_directory={train}",
                                f"--train_shards={shards}", f"--num_workers={num_workers}"]),
                ("established", established, [os.path.abspath(__file__), f"--established_build={train}",
                                              f"--shards={shards}", f"--workers={num_workers}"])):
            output = os.path.join(root, output)
            shutil.rmtree(output, ignore_errors=True)
            os.sync()
            seconds.append(_timed_command(arguments + [f"--output_directory={output}"]))
    identical = _shard_bytes(os.path.join(root, "ours")).keys() == _shard_bytes(os.path.join(root, "established")).keys()
    ratios = [theirs / our for our, theirs in zip(ours, established)]
    print(f"{num_workers} workers vs the established approach with {num_workers} threads, {rounds} alternating "
          f"rounds of {num_images} images, each a fresh process: ours "
          f"{', '.join(f'{num_images / s:.0f}' for s in ours)} images/s, established "
          f"{', '.join(f'{num_images / s:.0f}' for s in established)} images/s; speed ratio per round "
          f"{', '.join(f'{ratio:.2f}x' for ratio in ratios)} (median {sorted(ratios)[len(ratios) // 2]:.2f}x); "
          f"same shard names: {identical}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds against the established approach.")
    parser.add_argument("--work_dir", default=None, help="Keep the generated tree here (default: a temp dir).")
    parser.add_argument("--established_build", default=None,
                        help="Internal: run only the established approach on this folder of class folders.")
    parser.add_argument("--output_directory", default=None, help="Internal: its output.")
    args = parser.parse_args()
    if args.established_build:
        established_build(args.established_build, args.output_directory, args.shards, args.workers)
        return
    root = args.work_dir or tempfile.mkdtemp(prefix="bench_build_imagenet_data_")
    start = time.perf_counter()
    mean_bytes = make_tree(root, args.images)
    print(f"generated {args.images} JPEGs (~500x375, q90, mean {mean_bytes / 1024:.0f} KiB) in "
          f"{time.perf_counter() - start:.1f}s under {root}")

    # Warm TensorFlow in this process (the in-process 1-worker build) and start the fork server that this
    # process keeps for every later build, so that the timed builds measure steady-state work only; the
    # start-up a fresh build pays once is measured on its own.
    timed_build(root, os.path.join(root, "warmup"), 1, 1)
    timed_build(root, os.path.join(root, "warmup"), args.workers, args.workers)
    one_seconds, one_summary = timed_build(root, os.path.join(root, "out1"), 1, args.shards)
    many_seconds, _ = timed_build(root, os.path.join(root, "outN"), args.workers, args.shards)
    tar_seconds, _ = timed_build(root, os.path.join(root, "outT"), args.workers, args.shards, use_tar=True)
    startup = worker_start_seconds()
    identical = _shard_bytes(os.path.join(root, "out1")) == _shard_bytes(
        os.path.join(root, "outN")) == _shard_bytes(os.path.join(root, "outT"))

    one_rate = args.images / one_seconds
    steady_rate = args.images / many_seconds
    fresh_rate = args.images / (many_seconds + startup)
    print(f"1 worker (in process), folders:     {one_rate:8.1f} images/s  ({one_seconds:.2f}s)")
    print(f"{args.workers} workers (processes), folders:    {steady_rate:8.1f} images/s  ({many_seconds:.2f}s; a fresh "
          f"build also pays {startup:.2f}s once: its fork server imports TensorFlow)")
    print(f"{args.workers} workers (processes), orig. tar: {args.images / tar_seconds:8.1f} images/s  "
          f"({tar_seconds:.2f}s); tar/folder time ratio {tar_seconds / many_seconds:.2f}")
    print(f"scaling 1 → {args.workers} workers: {steady_rate / one_rate:.2f}x "
          f"({steady_rate / one_rate / args.workers:.0%} efficiency); {fresh_rate / one_rate:.2f}x "
          f"({fresh_rate / one_rate / args.workers:.0%}) with the one-off worker start-up")
    stages = one_summary["worker_seconds_per_stage"]
    total = sum(stages.values())
    print(f"1-worker time split over {args.images} images: " + ", ".join(
        f"{stage} {seconds / args.images * 1e3:.3f} ms ({seconds / total:.0%})" for stage, seconds in
        sorted(stages.items(), key=lambda item: -item[1])) + f"; other (Python, planning) "
        f"{(one_seconds - total) / args.images * 1e3:.3f} ms/image")
    print(f"byte-identical shards for 1 worker, {args.workers} workers and tar input: {identical}")
    compare_with_established(root, args.images, args.workers, args.shards, args.rounds)
    if not args.work_dir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
