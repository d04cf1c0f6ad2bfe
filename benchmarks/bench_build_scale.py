"""How data_prep's build grows with ImageNet's shape and size (run by hand; prints figures, asserts nothing).

    .venv/bin/python benchmarks/bench_build_scale.py --images=1281167 --sizes=0.1,1

Generates, at each size, a synthetic ImageNet of the real shape with tiny JPEGs: 1,000 classes packed as
the original ILSVRC2012_img_train.tar (a tar of 1,000 per-class tars, by data_prep.original_layout), a
flat validation folder with its label file (50,000 per 1,281,167 training images), and bounding-box XML
for 42.5% of the training images (544,546 of 1,281,167 in the original), converted to the box CSV by
data_prep.process_bounding_boxes. Then it runs the build command (a process of its own, as users run it)
into the default 1,024 / 128 shards and, up to --compare_up_to images, the same images into 10 shards,
and prints per size: images/s, peak resident memory of the build process and of each worker (and of
the fork server the workers are forked from; resident pages they share with it count in each), bytes
written per byte of shards, and the per-shard overhead; then how time per image grows with the size.
Tiny images make the per-file and per-shard costs (listing, planning, journal, progress) visible; the
per-image cost of real photos is bench_build_imagenet_data's subject.
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from data_prep import bounding_boxes  # noqa: E402
from data_prep import original_layout  # noqa: E402

NUM_CLASSES = 1000
IMAGENET_TRAIN, IMAGENET_VALIDATION, IMAGENET_BOXED = 1_281_167, 50_000, 544_546
DEFAULT_SHARDS, FEW_SHARDS = (1024, 128), (8, 2)
_POLL_SECONDS = 0.1

# Runs the build command and, on its way out, records its own peak memory and blocks written, and those
# of its descendants: the workers, reaped by the fork server, count once that is stopped and reaped too
# (through multiprocessing's private handle on it: this is a measurement, not the build).
_MEASURED_BUILD = """
import atexit, json, os, resource, sys
from multiprocessing import forkserver
def report(path=sys.argv[1]):
    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        os.close(server._forkserver_alive_fd)  # the server exits at the end of this pipe
        os.waitpid(server._forkserver_pid, 0)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(path, "w") as report_file:
        json.dump({"max_rss_kib": own.ru_maxrss, "written_bytes": own.ru_oublock * 512,
                   "children_written_bytes": children.ru_oublock * 512}, report_file)
atexit.register(report)
sys.argv = ["build_imagenet_data"] + sys.argv[2:]
from absl import app
from data_prep import build_imagenet_data
app.run(build_imagenet_data.main)
"""


def tiny_jpegs(count=64, seed=0):
    """`count` distinct 16x16 JPEGs (a few hundred bytes each); files reuse them in turn."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        output = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(output, format="JPEG", quality=90)
        result.append(output.getvalue())
    return result


def _annotation(file_stem, synset):
    return (f"<annotation><filename>{file_stem}</filename><size><width>16</width><height>16</height>"
            f"<depth>3</depth></size><object><name>{synset}</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
            f"<xmax>12</xmax><ymax>14</ymax></bndbox></object></annotation>")


def make_dataset(root, num_train, num_validation):
    """Writes root/train.tar, root/validation/ + labels, root/boxes.csv, root/labels.txt; returns
    (seconds to generate, seconds to convert the box XML)."""
    start = time.perf_counter()
    jpegs = tiny_jpegs()
    synsets = [f"n{index:08d}" for index in range(1, NUM_CLASSES + 1)]
    train, xml = os.path.join(root, "train"), os.path.join(root, "xml")
    boxed_every = IMAGENET_TRAIN / IMAGENET_BOXED
    next_boxed = 0.0
    for index in range(num_train):
        synset = synsets[index % NUM_CLASSES]
        stem = f"{synset}_{index // NUM_CLASSES}"
        folder = os.path.join(train, synset)
        if index < NUM_CLASSES:
            os.makedirs(folder)
            os.makedirs(os.path.join(xml, synset))
        with open(os.path.join(folder, stem + ".JPEG"), "wb") as image_file:
            image_file.write(jpegs[index % len(jpegs)])
        if index >= next_boxed:
            next_boxed += boxed_every
            with open(os.path.join(xml, synset, stem + ".xml"), "w") as xml_file:
                xml_file.write(_annotation(stem, synset))
    original_layout.make_train_tar(train, os.path.join(root, "train.tar"))
    shutil.rmtree(train)
    validation = os.path.join(root, "validation")
    os.makedirs(validation)
    with open(os.path.join(root, "validation_labels.txt"), "w") as labels:
        for index in range(num_validation):  # file names sort in this order, as the original's do
            with open(os.path.join(validation, f"ILSVRC2012_val_{index + 1:08d}.JPEG"), "wb") as image_file:
                image_file.write(jpegs[index % len(jpegs)])
            labels.write(synsets[(index * 7) % NUM_CLASSES] + "\n")
    with open(os.path.join(root, "labels.txt"), "w") as labels:
        labels.write("\n".join(synsets) + "\n")
    generate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    bounding_boxes.write_csv(os.path.join(root, "boxes.csv"), directory=xml, log=io.StringIO())
    box_seconds = time.perf_counter() - start
    shutil.rmtree(xml)
    return generate_seconds, box_seconds


def _peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _helpers_of(pid):
    """Pids of the build's descendant processes: its fork server and the workers forked from it (not
    multiprocessing's resource tracker)."""
    helpers, parents = [], [pid]
    while parents:
        parent = parents.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as children:
                pids = [int(child) for child in children.read().split()]
        except OSError:
            continue
        for child in pids:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                    if b"resource_tracker" not in cmdline.read():
                        helpers.append(child)
                        parents.append(child)
            except OSError:
                continue
    return helpers


def _shards_size(directory):
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory)
               if name.startswith(("train-", "validation-")))


def measured_build(root, output, shards, workers):
    """Runs the build command; returns its figures."""
    shutil.rmtree(output, ignore_errors=True)
    report = os.path.join(root, "report.json")
    command = [sys.executable, "-c", _MEASURED_BUILD, report, f"--train_tar={root}/train.tar",
               f"--validation_directory={root}/validation",
               f"--validation_labels_file={root}/validation_labels.txt", f"--labels_file={root}/labels.txt",
               f"--bounding_box_file={root}/boxes.csv", f"--output_directory={output}",
               f"--train_shards={shards[0]}", f"--validation_shards={shards[1]}", f"--num_workers={workers}"]
    os.sync()
    worker_peaks = {}
    start = time.perf_counter()
    build = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    while build.poll() is None:
        for worker in _helpers_of(build.pid):
            peak = _peak_rss_kib(worker)
            if peak is not None:
                worker_peaks[worker] = peak
        time.sleep(_POLL_SECONDS)
    seconds = time.perf_counter() - start
    stderr = build.stderr.read()
    if build.returncode != 0:
        raise SystemExit(f"the build failed:\n{stderr}")
    with open(report) as report_file:
        figures = json.load(report_file)
    with open(os.path.join(output, "build_summary.json")) as summary_file:
        summary = json.load(summary_file)
    images = sum(split["images_written"] for split in summary["splits"].values())
    shards_bytes = _shards_size(output)
    return {"seconds": seconds, "images": images, "shards": sum(shards), "shards_bytes": shards_bytes,
            "written_ratio": (figures["written_bytes"] + figures["children_written_bytes"]) / shards_bytes,
            "main_peak_mib": figures["max_rss_kib"] / 1024,
            "worker_peaks_mib": sorted(peak / 1024 for peak in worker_peaks.values())}


def _describe(label, figures):
    workers = ", ".join(f"{peak:.0f}" for peak in figures["worker_peaks_mib"])
    return (f"  {label:>18}: {figures['images'] / figures['seconds']:8.0f} images/s ({figures['seconds']:.1f} s); "
            f"peak RSS main {figures['main_peak_mib']:.0f} MiB, fork server and workers [{workers}] MiB; bytes written / "
            f"shard bytes {figures['written_ratio']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128_117, help="Training images at size 1.")
    parser.add_argument("--sizes", default="0.1,0.3,1", help="Fractions of --images to build, in order.")
    parser.add_argument("--compare_up_to", type=int, default=200_000,
                        help="Also build into 10 shards (side by side) at sizes of at most this many images.")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--work_dir", default=None, help="Where to generate (default: a temporary folder).")
    args = parser.parse_args()
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix="bench_build_scale_", dir=args.work_dir)
    rows = []
    try:
        for fraction in (float(size) for size in args.sizes.split(",")):
            num_train = round(args.images * fraction)
            num_validation = max(round(num_train * IMAGENET_VALIDATION / IMAGENET_TRAIN), DEFAULT_SHARDS[1])
            root = os.path.join(work_dir, f"size_{num_train}")
            os.makedirs(root)
            generate_seconds, box_seconds = make_dataset(root, num_train, num_validation)
            print(f"{num_train:,} train + {num_validation:,} validation tiny JPEGs in {NUM_CLASSES} classes: "
                  f"generated in {generate_seconds:.0f} s; box XML → CSV in {box_seconds:.1f} s "
                  f"({num_train / IMAGENET_TRAIN * IMAGENET_BOXED / box_seconds:,.0f} files/s)", flush=True)
            default = measured_build(root, os.path.join(root, "out"), DEFAULT_SHARDS, args.workers)
            print(_describe("1,024/128 shards", default), flush=True)
            if num_train <= args.compare_up_to:
                shutil.rmtree(os.path.join(root, "out"))
                few = measured_build(root, os.path.join(root, "out"), FEW_SHARDS, args.workers)
                print(_describe("10 shards", few))
                overhead = (default["seconds"] - few["seconds"]) / (default["shards"] - few["shards"])
                print(f"  1,024/128 vs 10 shards: {default['images'] / default['seconds'] / (few['images'] / few['seconds']):.2f}x"
                      f" the images/s; per-shard overhead {overhead * 1e3:.1f} ms of wall clock", flush=True)
            rows.append((num_train + num_validation, default["seconds"], default["main_peak_mib"]))
            shutil.rmtree(root)
        if len(rows) > 1:
            (small_images, small_seconds, _), (large_images, large_seconds, _) = rows[0], rows[-1]
            print(f"time per image at {large_images:,} vs {small_images:,} images: "
                  f"{large_seconds / large_images / (small_seconds / small_images):.2f}x "
                  f"(1.00 = linear; the fixed start-up of worker processes weighs more at the small size); "
                  f"marginal {(large_seconds - small_seconds) / (large_images - small_images) * 1e6:.0f} µs/image; "
                  f"main peak memory {rows[0][2]:.0f} → {rows[-1][2]:.0f} MiB")
    finally:
        shutil.rmtree(work_dir)


if __name__ == "__main__":
    main()
