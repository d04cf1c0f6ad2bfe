"""Benchmark of data_prep.build_imagenet_data (run by hand; prints figures, asserts nothing).

    .venv/bin/python benchmarks/bench_build_imagenet_data.py [--images=2000 --workers=2]

Builds shards from a generated tree of ImageNet-like JPEGs (~500x375, quality 90, photo content) with 1
and with N workers from folders, and with N workers from the original tar layout, all in one run, and
prints images/s, the scaling ratio and where a worker's time goes (read, verify, convert, serialize, write).
"""

import argparse
import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from skimage import data as sample_photos

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_prep import builder  # noqa: E402
from data_prep import original_layout  # noqa: E402
from data_prep import shard_plan  # noqa: E402

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


def _touch_tensorflow(_):
    from data_prep import shard_writer  # noqa: F401  (what every pool worker pays once)
    return os.getpid()


def worker_start_seconds(num_workers):
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(num_workers, initializer=builder._init_worker) as pool:
        pool.map(_touch_tensorflow, range(num_workers), chunksize=1)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--work_dir", default=None, help="Keep the generated tree here (default: a temp dir).")
    args = parser.parse_args()
    root = args.work_dir or tempfile.mkdtemp(prefix="bench_build_imagenet_data_")
    start = time.perf_counter()
    mean_bytes = make_tree(root, args.images)
    print(f"generated {args.images} JPEGs (~500x375, q90, mean {mean_bytes / 1024:.0f} KiB) in "
          f"{time.perf_counter() - start:.1f}s under {root}")

    # Warm TensorFlow in this process so the in-process 1-worker build measures steady-state work only.
    timed_build(root, os.path.join(root, "warmup"), 1, 1)
    one_seconds, one_summary = timed_build(root, os.path.join(root, "out1"), 1, args.shards)
    many_seconds, _ = timed_build(root, os.path.join(root, "outN"), args.workers, args.shards)
    tar_seconds, _ = timed_build(root, os.path.join(root, "outT"), args.workers, args.shards, use_tar=True)
    startup = worker_start_seconds(args.workers)
    identical = _shard_bytes(os.path.join(root, "out1")) == _shard_bytes(
        os.path.join(root, "outN")) == _shard_bytes(os.path.join(root, "outT"))

    one_rate = args.images / one_seconds
    many_rate = args.images / many_seconds
    steady_rate = args.images / max(many_seconds - startup, 1e-9)
    print(f"1 worker (in process), folders:     {one_rate:8.1f} images/s  ({one_seconds:.2f}s)")
    print(f"{args.workers} workers (spawned), folders:      {many_rate:8.1f} images/s  ({many_seconds:.2f}s, "
          f"incl. {startup:.2f}s worker start-up with TensorFlow import)")
    print(f"{args.workers} workers (spawned), original tar: {args.images / tar_seconds:8.1f} images/s  "
          f"({tar_seconds:.2f}s); tar/folder time ratio {tar_seconds / many_seconds:.2f}")
    print(f"scaling 1 → {args.workers} workers: {many_rate / one_rate:.2f}x wall clock "
          f"({many_rate / one_rate / args.workers:.0%} efficiency); {steady_rate / one_rate:.2f}x "
          f"({steady_rate / one_rate / args.workers:.0%}) without the one-off worker start-up")
    stages = one_summary["worker_seconds_per_stage"]
    total = sum(stages.values())
    print(f"1-worker time split over {args.images} images: " + ", ".join(
        f"{stage} {seconds / args.images * 1e3:.3f} ms ({seconds / total:.0%})" for stage, seconds in
        sorted(stages.items(), key=lambda item: -item[1])) + f"; other (Python, planning) "
        f"{(one_seconds - total) / args.images * 1e3:.3f} ms/image")
    print(f"byte-identical shards for 1 worker, {args.workers} workers and tar input: {identical}")
    if not args.work_dir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
