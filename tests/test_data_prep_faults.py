"""Fault injection for the data_prep tools: every bad input or environment ends in one line (or correct
output), within a timeout, and nothing already written is lost or changed.

Images: what data_prep stores for 16-bit, palette and transparent images is what serving decodes from
the original bytes, checked against pixels computed here with numpy from the raw values.
"""

import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep import builder
from data_prep import demo_dataset
from data_prep import inputs
from data_prep.image_coding import BadImageError, decode_pixels, prepare_image
from data_prep.shard_plan import incomplete_name
from official.utils.errors import PipelineError
from official.xception import preprocessing
from tests import data_prep_fixtures as fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDE = 71  # the smallest Xception input: preprocess_for_eval at this size and fraction 1 does not resample
MAX_PIXELS = 10_000_000


def _build_config(tree, output, **overrides):
    settings = dict(output_directory=str(output), train_directory=tree.train_directory,
                    validation_directory=tree.validation_directory,
                    validation_labels_file=tree.validation_labels_file, train_shards=2, validation_shards=1,
                    num_workers=1, progress_interval=1e9)
    settings.update(overrides)
    return builder.BuildConfig(**settings)


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    return fixtures.make_raw_tree(str(tmp_path_factory.mktemp("raw")), images_per_class=3, validation_per_class=1,
                                  quirks=False)


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_png(samples, color_type, bit_depth, palette=None, transparency=None):
    """A PNG written by hand from raw samples ([h, w] or [h, w, c]; palette indices for color type 3), so
    that the test does not depend on how Pillow writes (it cannot write 16-bit colour or alpha)."""
    samples = np.asarray(samples)
    height, width = samples.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = samples.astype(dtype).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth,
                                                                   color_type, 0, 0, 0))
    if palette is not None:
        data += _png_chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if transparency is not None:
        data += _png_chunk(b"tRNS", np.asarray(transparency, np.uint8).tobytes())
    return data + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")


def expected_rgb(colour, opacity, max_value):
    """The rule, computed independently: colour (gray or RGB) and opacity scaled by the bit depth's
    maximum, grayscale repeated, composited onto black, rounded to 8 bits."""
    colour = np.asarray(colour, np.float64) / max_value
    if colour.ndim == 2:
        colour = colour[:, :, None]
    colour = np.broadcast_to(colour, colour.shape[:2] + (3,))
    opacity = np.asarray(opacity, np.float64)[:, :, None] / max_value
    return np.round(colour * opacity * 255).astype(np.uint8)


def _gradients(max_value):
    """Smooth [SIDE, SIDE] ramps (JPEG keeps them within a few levels) over the whole value range."""
    ramp = np.linspace(0, 1, SIDE)
    return [np.round(max_value * values).astype(np.int64) for values in (
        np.add.outer(ramp, ramp) / 2, np.outer(ramp, 1 - ramp), np.add.outer(1 - ramp, ramp) / 2,
        np.add.outer(ramp, ramp * 0.2) / 1.2)]


def _transparent_images():
    """{case: (original bytes, expected RGB)} for every PNG kind that differs from plain 8-bit RGB."""
    red8, green8, blue8, alpha8 = _gradients(255)
    red16, green16, blue16, alpha16 = _gradients(65535)
    opaque8, opaque16 = np.full((SIDE, SIDE), 255), np.full((SIDE, SIDE), 65535)
    rgb8, rgb16 = np.stack([red8, green8, blue8], -1), np.stack([red16, green16, blue16], -1)
    # A palette of 256 colours with 256 opacities; tRNS gives index i the opacity 255 - i.
    palette = np.stack([np.arange(256), 255 - np.arange(256), (np.arange(256) * 7) % 256], -1)
    indices = (red8 + blue8) // 2
    cases = {
        "16-bit gray": (write_png(red16, 0, 16), expected_rgb(red16, opaque16, 65535)),
        "16-bit gray+alpha": (write_png(np.stack([red16, alpha16], -1), 4, 16), expected_rgb(red16, alpha16, 65535)),
        "16-bit RGB": (write_png(rgb16, 2, 16), expected_rgb(rgb16, opaque16, 65535)),
        "16-bit RGBA": (write_png(np.concatenate([rgb16, alpha16[..., None]], -1), 6, 16),
                        expected_rgb(rgb16, alpha16, 65535)),
        "8-bit gray+alpha": (write_png(np.stack([red8, alpha8], -1), 4, 8), expected_rgb(red8, alpha8, 255)),
        "8-bit RGBA": (write_png(np.concatenate([rgb8, alpha8[..., None]], -1), 6, 8), expected_rgb(rgb8, alpha8, 255)),
        "palette": (write_png(indices, 3, 8, palette), palette[indices].astype(np.uint8)),
        "palette+tRNS": (write_png(indices, 3, 8, palette, 255 - np.arange(256)),
                         expected_rgb(palette[indices], 255 - indices, 255)),
    }
    bmp = io.BytesIO()  # Pillow writes RGBA as a 32-bit BMP, whose fourth channel TensorFlow reads as alpha
    Image.fromarray(np.concatenate([rgb8, alpha8[..., None]], -1).astype(np.uint8), "RGBA").save(bmp, format="BMP")
    cases["32-bit BMP"] = (bmp.getvalue(), expected_rgb(rgb8, alpha8, 255))
    return cases


TRANSPARENT_IMAGES = _transparent_images()


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _serving_pixels(image_bytes):
    # The serving signature's per-image function, traced as in the SavedModel, mapped back to 0..255.
    return (preprocessing.preprocess_for_eval(image_bytes, SIDE, central_fraction=1.0) + 1.0) * 127.5


def serving_pixels(image_bytes):
    return np.round(_serving_pixels(tf.constant(image_bytes)).numpy()).astype(np.int64)


@pytest.mark.parametrize("case", sorted(TRANSPARENT_IMAGES))
def test_stored_image_decodes_to_what_serving_computes_from_the_original_bytes(case):
    original, expected = TRANSPARENT_IMAGES[case]
    # Serving, from the original bytes: exactly the rule.
    np.testing.assert_array_equal(serving_pixels(original), expected)
    # data_prep: the pixels it encodes are exactly the rule too ...
    np.testing.assert_array_equal(decode_pixels(original, Image.open(io.BytesIO(original))), expected)
    # ... and the stored JPEG decodes (through serving) to them within JPEG's loss.
    prepared = prepare_image(original, MAX_PIXELS)
    file_format = "BMP" if "BMP" in case else "PNG"
    assert prepared.conversion == f"{file_format} to JPEG" and (prepared.height, prepared.width) == (SIDE, SIDE)
    error = np.abs(serving_pixels(prepared.jpeg) - expected)
    # Measured: mean 0.6-1.5, max 2-10 levels; storing on the other background or clipping 16-bit values
    # is off by about 100 on average.
    assert error.mean() < 2 and error.max() <= 16, (error.mean(), error.max())


def test_shards_hold_what_serving_computes_from_the_original_png(raw_tree, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(raw_tree.train_directory, train)
    originals = {f"{synset}_{case.replace(' ', '_')}.png": TRANSPARENT_IMAGES[case]
                 for synset, case in zip(fixtures.SYNSETS, ("16-bit gray", "8-bit RGBA", "palette+tRNS"))}
    for synset, (name, (data, _)) in zip(fixtures.SYNSETS, originals.items()):
        (train / synset / name).write_bytes(data)
    builder.build(_build_config(raw_tree, tmp_path / "out", train_directory=str(train)), log=io.StringIO())
    stored = {record["image/filename"].decode(): record["image/encoded"]
              for shard in fixtures.read_shards(str(tmp_path / "out"), "train") for record in shard}
    for name, (_, expected) in originals.items():
        error = np.abs(serving_pixels(stored[name]) - expected)
        assert error.mean() < 2 and error.max() <= 16, (name, error.mean(), error.max())


def test_transparent_gif_pixels_are_black_on_both_sides():
    indices = np.zeros((SIDE, SIDE), np.uint8)
    indices[:, SIDE // 2:] = 1           # left half: palette entry 0, transparent; right half: opaque green
    image = Image.fromarray(indices, "P")
    image.putpalette([250, 240, 10, 0, 200, 0] + [0] * 762)
    output = io.BytesIO()
    image.save(output, format="GIF", transparency=0)
    expected = np.zeros((SIDE, SIDE, 3), np.uint8)
    expected[:, SIDE // 2:] = (0, 200, 0)
    np.testing.assert_array_equal(serving_pixels(output.getvalue()), expected)
    np.testing.assert_array_equal(decode_pixels(output.getvalue(), Image.open(output)), expected)


@pytest.mark.parametrize("format_name", ["TIFF", "WEBP"])
def test_formats_serving_cannot_read_follow_the_same_rule(format_name):
    red16 = _gradients(65535)[0]
    red8, green8, blue8, alpha8 = _gradients(255)
    if format_name == "TIFF":  # Pillow writes 16-bit grayscale TIFF
        image = Image.fromarray(red16.astype(np.uint16))
        expected = expected_rgb(red16, np.full_like(red16, 65535), 65535)
        assert image.mode.startswith("I;16")
    else:
        rgba = np.stack([red8, green8, blue8, alpha8], -1).astype(np.uint8)
        image, expected = Image.fromarray(rgba, "RGBA"), expected_rgb(rgba[..., :3], alpha8, 255)
    output = io.BytesIO()
    image.save(output, format=format_name, **({"lossless": True} if format_name == "WEBP" else {}))
    np.testing.assert_array_equal(decode_pixels(output.getvalue(), Image.open(output)), expected)


def test_32_bit_images_are_refused_by_name():
    output = io.BytesIO()
    Image.fromarray(np.full((8, 8), 70000, np.int32), "I").save(output, format="TIFF")
    with pytest.raises(BadImageError, match="32-bit integer pixels is not supported"):
        prepare_image(output.getvalue(), MAX_PIXELS)


def run_tool(module, *args, timeout=120):
    """(exit code, stderr) of `python -m module args`, which must end within `timeout` seconds."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return result.returncode, result.stderr


def assert_one_line_error(code, stderr, *fragments):
    """A non-zero exit with a single 'error: ...' line holding `fragments`, no traceback."""
    assert code != 0 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def tree_snapshot(root):
    """{relative path: bytes} of every file under `root` (symlinks as their target, pipes as "pipe")."""
    snapshot = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                snapshot[os.path.relpath(path, root)] = "-> " + os.readlink(path)
            elif not os.path.isfile(path):
                snapshot[os.path.relpath(path, root)] = "pipe"
            else:
                with open(path, "rb") as file:
                    snapshot[os.path.relpath(path, root)] = file.read()
    return snapshot


def _annotation(width, height, box):
    xmin, ymin, xmax, ymax = box
    return (f"<annotation><size><width>{width}</width><height>{height}</height></size><object><bndbox>"
            f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
            f"</annotation>")


@pytest.mark.parametrize("xml_files", [{}, {"a.xml": "<annotation>", "b.xml": "not xml"},
                                       {"c.xml": _annotation(100, 100, ("nan", 0, 50, 50))}],
                         ids=["no XML", "all XML broken", "only NaN boxes"])
def test_process_bounding_boxes_keeps_the_existing_csv_when_it_has_nothing_to_write(tmp_path, xml_files):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    for name, text in xml_files.items():
        (annotations / name).write_text(text)
    output = tmp_path / "boxes.csv"
    output.write_text("n01_1.JPEG,0.1000,0.1000,0.9000,0.9000\n")
    before = tree_snapshot(tmp_path)
    code, stderr = run_tool("data_prep.process_bounding_boxes", f"--bounding_box_dir={annotations}",
                            f"--output_file={output}")
    assert_one_line_error(code, stderr, str(annotations), "was left as it was")
    assert tree_snapshot(tmp_path) == before


def test_non_finite_box_coordinates_are_skipped_with_the_reason(tmp_path):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "n01_1.xml").write_text(_annotation(100, 200, (10, 20, 60, 120)))
    (annotations / "n01_2.xml").write_text(_annotation(100, 100, (0, "nan", 50, 50)))
    (annotations / "n01_3.xml").write_text(_annotation(100, 100, (0, 0, "inf", 50)))
    (annotations / "n01_4.xml").write_text(_annotation("inf", 100, (0, 0, 50, 50)))
    output = tmp_path / "boxes.csv"
    code, stderr = run_tool("data_prep.process_bounding_boxes", f"--bounding_box_dir={annotations}",
                            f"--output_file={output}")
    assert code == 0, stderr
    assert output.read_text() == "n01_1.JPEG,0.1000,0.1000,0.6000,0.6000\n"
    assert "<ymin> is not a finite number: 'nan'" in stderr and "<xmax> is not a finite number: 'inf'" in stderr
    assert "<width> is not a finite number: 'inf'" in stderr and "3 unreadable XML files skipped" in stderr


def test_box_csv_for_other_images_fails_and_a_partial_match_warns_with_counts(raw_tree, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("elsewhere_1.JPEG,0.1,0.1,0.5,0.5\nelsewhere_2.JPEG,0.1,0.1,0.5,0.5\n")
    with pytest.raises(PipelineError, match=r"boxes for 2 images, but none of them is among the 12 input images "
                                            r"\(first: 'elsewhere_1.JPEG'\)"):
        builder.build(_build_config(raw_tree, tmp_path / "out1", bounding_box_file=str(other)), log=io.StringIO())
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(PipelineError, match="holds no boxes"):
        builder.build(_build_config(raw_tree, tmp_path / "out2", bounding_box_file=str(empty)), log=io.StringIO())
    partial = tmp_path / "partial.csv"
    with open(raw_tree.bounding_box_file) as matching:
        lines = matching.read().splitlines()
    partial.write_text("\n".join(lines + ["elsewhere_1.JPEG,0.1,0.1,0.5,0.5"]) + "\n")
    log = io.StringIO()
    builder.build(_build_config(raw_tree, tmp_path / "out3", bounding_box_file=str(partial)), log=log)
    images_with_boxes = len({line.split(",")[0] for line in lines}) + 1
    assert (f"1 of its {images_with_boxes} images are not in the input (first: 'elsewhere_1.JPEG')"
            in log.getvalue())


def test_train_only_rebuild_with_another_class_list_refuses_to_keep_the_old_validation_shards(raw_tree, tmp_path):
    output = tmp_path / "out"
    builder.build(_build_config(raw_tree, output), log=io.StringIO())
    train = tmp_path / "train"
    shutil.copytree(raw_tree.train_directory, train)
    shutil.copytree(train / fixtures.SYNSETS[0], train / "n00000000")  # sorts first: every label moves up
    before = tree_snapshot(output)
    train_only = _build_config(raw_tree, output, train_directory=str(train), validation_directory=None,
                               validation_labels_file=None)
    with pytest.raises(PipelineError, match=r"the validation shards in .* were built with another class list "
                                            r"\(3 classes, now 4: 'n00000000' is now label 1\).*remove the old "
                                            r"validation-\* shards"):
        builder.build(train_only, log=io.StringIO())
    assert tree_snapshot(output) == before
    # Either way out works: rebuilding both splits, or removing the old validation shards.
    summary = builder.build(_build_config(raw_tree, output, train_directory=str(train)), log=io.StringIO())
    assert summary["status"] == "complete" and len(summary["classes"]) == 4
    validation_labels = {record["image/class/synset"].decode(): record["image/class/label"]
                         for shard in fixtures.read_shards(str(output), "validation") for record in shard}
    assert validation_labels == {synset: index + 2 for index, synset in enumerate(fixtures.SYNSETS)}
    shutil.rmtree(output)
    builder.build(_build_config(raw_tree, output), log=io.StringIO())
    for name in os.listdir(output):
        if name.startswith("validation-"):
            os.remove(output / name)
    summary = builder.build(train_only, log=io.StringIO())
    assert summary["status"] == "complete" and not any(name.startswith("validation-") for name in summary["shards"])
    # Shards the summary does not describe (it was deleted) cannot be checked: refused as well.
    builder.build(_build_config(raw_tree, output), log=io.StringIO())
    os.remove(output / builder.SUMMARY_NAME)
    before = tree_snapshot(output)
    with pytest.raises(PipelineError, match=r"holds validation-00000-of-00001 \(and 0 more\), which "
                                            r"build_summary.json does not describe"):
        builder.build(train_only, log=io.StringIO())
    assert tree_snapshot(output) == before


def _processes_writing(directory):
    """{pid: file name} of the processes writing a shard's temporary file in `directory`."""
    writers = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                name = os.path.basename(target)
                if os.path.dirname(target) == str(directory) and name.startswith(incomplete_name("")):
                    writers[int(pid)] = name
        except OSError:
            continue  # the process ended meanwhile
    return writers


def _slow_build(tmp_path):
    """(command, output folder, running build process) of a 2-worker build whose shards take a while."""
    train = tmp_path / "train"
    for class_index, synset in enumerate(fixtures.SYNSETS):
        (train / synset).mkdir(parents=True)
        for index in range(4):  # big flat PNGs: slow enough to convert that a worker is caught in a shard
            colour = fixtures.CLASS_COLOURS[synset] + (255,)
            (train / synset / f"{synset}_{index}.png").write_bytes(
                fixtures.encode(np.full((1200, 1200 + class_index + index, 4), colour, np.uint8), "PNG"))
    output = tmp_path / "out"
    command = [sys.executable, "-m", "data_prep.build_imagenet_data", f"--train_directory={train}",
               f"--output_directory={output}", "--train_shards=6", "--num_workers=2"]
    # A session of its own, as a terminal's foreground job: Ctrl-C goes to the whole group.
    build = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return command, output, build


def _wait_for_a_worker_after_a_finished_shard(output, build):
    """(pid, temporary file) of a worker writing a shard once another shard is vouched for."""
    while build.poll() is None:
        writers = _processes_writing(output) if fixtures.vouched_shards(str(output)) else {}
        if writers:
            return next(iter(writers.items()))
    raise AssertionError("the build ended before a worker was caught writing a shard")


def _assert_rerun_resumes(command, output, status):
    with open(output / "build_summary.json") as summary_file:
        summary = json.load(summary_file)
    kept = set(summary["shards"])
    # A shard finished in the last instant may not be recorded yet: it is then built again, never trusted.
    assert summary["status"] == status and kept and kept <= set(os.listdir(output))
    assert not _processes_writing(output)  # no worker left behind
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(kept)} finished shards reused" in rerun.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_a_worker_killed_by_the_kernel_fails_the_build_naming_it_and_the_rerun_resumes(tmp_path):
    command, output, build = _slow_build(tmp_path)
    try:
        victim, _ = _wait_for_a_worker_after_a_finished_shard(output, build)
        os.kill(victim, signal.SIGKILL)
        _, stderr = build.communicate(timeout=60)
    finally:
        build.kill()
    assert_one_line_error(build.returncode, stderr, f"build worker {victim} was killed by SIGKILL",
                          "out-of-memory", "run the same command again to resume")
    assert "while building train-" in stderr
    _assert_rerun_resumes(command, output, "failed")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_ctrl_c_stops_the_build_and_its_workers_in_one_line_and_the_rerun_resumes(tmp_path):
    command, output, build = _slow_build(tmp_path)
    try:
        _wait_for_a_worker_after_a_finished_shard(output, build)
        os.killpg(build.pid, signal.SIGINT)
        _, stderr = build.communicate(timeout=60)
    finally:
        build.kill()
    assert_one_line_error(build.returncode, stderr, "interrupted", "run the same command again to resume")
    _assert_rerun_resumes(command, output, "in_progress")


def test_tars_made_with_tar_c_dot_are_read_like_the_folders(raw_tree, tmp_path):
    tars = tmp_path / "tars"
    tars.mkdir()
    for synset in fixtures.SYNSETS:  # members named ./n01000001_0.JPEG, as `tar -C folder .` writes them
        subprocess.run(["tar", "-C", os.path.join(raw_tree.train_directory, synset), "-cf",
                        str(tars / f"{synset}.tar"), "."], check=True)
    subprocess.run(["tar", "-C", str(tars), "-cf", str(tmp_path / "train.tar"), "."], check=True)
    subprocess.run(["tar", "-C", raw_tree.validation_directory, "-cf", str(tmp_path / "val.tar"), "."], check=True)
    with open(tmp_path / "val.tar", "rb") as archive:
        assert b"./ILSVRC2012_val_00000001.JPEG" in archive.read()
    builder.build(_build_config(raw_tree, tmp_path / "from_folders"), log=io.StringIO())
    builder.build(_build_config(raw_tree, tmp_path / "from_tars", train_directory=None,
                                train_tar=str(tmp_path / "train.tar"), validation_directory=None,
                                validation_tar=str(tmp_path / "val.tar")), log=io.StringIO())
    from_folders = fixtures.shard_bytes(str(tmp_path / "from_folders"))
    assert from_folders and fixtures.shard_bytes(str(tmp_path / "from_tars")) == from_folders


@pytest.mark.parametrize("member, outcome", [
    ("n01000003.tar.gz", "compressed archive, not a plain <class>.tar"),
    ("n01000003.zip", "compressed archive, not a plain <class>.tar"),
    ("README.txt", None),  # not a class: listed among the non-image files of the summary
])
def test_a_train_tar_member_that_is_no_class_tar_is_an_error_or_named(raw_tree, tmp_path, member, outcome):
    tars = tmp_path / "tars"
    tars.mkdir()
    for synset in fixtures.SYNSETS[:2]:
        subprocess.run(["tar", "-C", os.path.join(raw_tree.train_directory, synset), "-cf",
                        str(tars / f"{synset}.tar"), "."], check=True)
    (tars / member).write_bytes(b"a class packed another way")
    subprocess.run(["tar", "-C", str(tars), "-cf", str(tmp_path / "train.tar"), "."], check=True)
    if outcome:
        with pytest.raises(PipelineError, match=rf"train.tar:{re.escape(member)} under --train_tar is a {re.escape(outcome)}"):
            inputs.list_train_tar(str(tmp_path / "train.tar"))
        return
    classes, non_images = inputs.list_train_tar(str(tmp_path / "train.tar"))
    assert sorted(classes) == list(fixtures.SYNSETS[:2])
    assert [item.path for item in non_images] == [f"{tmp_path / 'train.tar'}:{member}"]


@pytest.mark.parametrize("flag", ["train_directory", "validation_directory"])
def test_an_output_directory_inside_the_images_is_refused_before_anything_is_written(raw_tree, flag):
    inside = os.path.join(getattr(raw_tree, flag), "out")
    before = tree_snapshot(getattr(raw_tree, flag))
    with pytest.raises(PipelineError, match=rf"--output_directory {re.escape(inside)} is inside --{flag}"):
        builder.build(_build_config(raw_tree, inside), log=io.StringIO())
    assert tree_snapshot(getattr(raw_tree, flag)) == before

@pytest.mark.parametrize("link, target", [("n01000002/loop", ".."), ("n01000002/deeper/self", "."),
                                          ("n01000003/up", "../n01000003")])
def test_symlink_loops_in_the_image_tree_are_one_line(raw_tree, tmp_path, link, target):
    train = tmp_path / "train"
    shutil.copytree(raw_tree.train_directory, train)
    os.makedirs(os.path.dirname(train / link), exist_ok=True)
    os.symlink(target, train / link)
    code, stderr = run_tool("data_prep.build_imagenet_data", f"--train_directory={train}",
                            f"--output_directory={tmp_path / 'out'}", "--train_shards=1", timeout=60)
    assert_one_line_error(code, stderr, f"{train / link} under --train_directory is a symbolic link to a folder "
                                        f"that contains it (a loop); remove the link")


def test_dangling_symlink_is_reported_as_a_skipped_image(raw_tree, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(raw_tree.train_directory, train)
    os.symlink("/nonexistent/photo.JPEG", train / fixtures.SYNSETS[0] / "gone.JPEG")
    summary = builder.build(_build_config(raw_tree, tmp_path / "out", train_directory=str(train)),
                            log=io.StringIO())
    assert summary["skipped_files"] == [{"split": "train", "path": str(train / fixtures.SYNSETS[0] / "gone.JPEG"),
                                         "reason": "unreadable (No such file or directory)"}]


def _bad_build_inputs(tmp_path, raw_tree):
    """{case: (flags, expected fragment of the error line)}; every case is set up under `tmp_path`."""
    os.mkfifo(tmp_path / "pipe.tar")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    (tmp_path / "not_a_tar.tar").write_bytes(b"\x1f\x8b" + bytes(600))
    (tmp_path / "a_file").write_text("precious")
    train = f"--train_directory={raw_tree.train_directory}"
    output = f"--output_directory={tmp_path / 'out'}"
    return {
        "pipe as tar": ([f"--train_tar={tmp_path / 'pipe.tar'}", output], "is not a regular file"),
        "folder as tar": ([f"--train_tar={tmp_path}", output], "is not a regular file"),
        "compressed tar": ([f"--train_tar={tmp_path / 'not_a_tar.tar'}", output], "is not an uncompressed tar"),
        "folder as labels": ([train, output, f"--labels_file={tmp_path}"], "Is a directory"),
        "binary metadata": ([train, output, f"--imagenet_metadata_file={tmp_path / 'binary.txt'}"],
                            "is not UTF-8 text"),
        "binary boxes": ([train, output, f"--bounding_box_file={tmp_path / 'binary.txt'}"], "--bounding_box_file"),
        "output is a file": ([train, f"--output_directory={tmp_path / 'a_file'}"], "cannot write --output_directory"),
        "missing images": ([f"--train_directory={tmp_path / 'nowhere'}", output], "does not exist"),
        "missing box file": ([train, output, f"--bounding_box_file={tmp_path / 'boxes.csv'}"],
                             f"--bounding_box_file {tmp_path / 'boxes.csv'} does not exist"),
        "no shards": ([train, output, "--validation_fraction=0.5", "--validation_shards=0"],
                      "--validation_shards must be at least 1"),
    }


BAD_BUILD_INPUTS = ("pipe as tar", "folder as tar", "compressed tar", "folder as labels", "binary metadata",
                    "binary boxes", "output is a file", "missing images", "missing box file", "no shards")


@pytest.mark.parametrize("case", BAD_BUILD_INPUTS)
def test_bad_build_input_is_one_line_and_touches_nothing(raw_tree, tmp_path, case):
    flags, fragment = _bad_build_inputs(tmp_path, raw_tree)[case]
    before = tree_snapshot(tmp_path)
    code, stderr = run_tool("data_prep.build_imagenet_data", *flags, "--train_shards=1", timeout=60)
    assert_one_line_error(code, stderr, fragment)
    after = tree_snapshot(tmp_path)
    assert {name: data for name, data in after.items() if not name.startswith("out/")} == before
    assert set(after) - set(before) <= {"out/.build_lock"}


DEMO_FLAGS = ("--num_classes=2", "--train_per_class=2", "--val_per_class=1", "--image_size=32")


def test_make_demo_dataset_refuses_a_folder_with_other_files_and_keeps_its_own_output(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    before = tree_snapshot(tmp_path)
    code, stderr = run_tool("data_prep.make_demo_dataset", f"--output_dir={foreign}", *DEMO_FLAGS)
    assert_one_line_error(code, stderr, str(foreign), "not empty", "nothing was written")
    assert tree_snapshot(tmp_path) == before

    demo = tmp_path / "demo"
    code, stderr = run_tool("data_prep.make_demo_dataset", f"--output_dir={demo}", *DEMO_FLAGS)
    assert code == 0, stderr
    assert sorted(os.listdir(tmp_path)) == ["demo", "photos"]  # no temporary folder left behind
    made = tree_snapshot(demo)
    assert "val_labels.txt" in made and "demo_dataset.json" in made
    code, stderr = run_tool("data_prep.make_demo_dataset", f"--output_dir={demo}", *DEMO_FLAGS)
    assert code == 0 and "already holds this demo dataset; nothing written" in stderr, stderr
    code, stderr = run_tool("data_prep.make_demo_dataset", f"--output_dir={demo}", *DEMO_FLAGS, "--seed=1")
    assert_one_line_error(code, stderr, "does not hold a demo dataset made with these settings")
    assert tree_snapshot(demo) == made


@pytest.mark.parametrize("flag, message", [
    ("--image_size=1000000", "--image_size must be between 32 and 4096, not 1000000"),
    ("--image_size=8", "--image_size must be between 32 and 4096, not 8"),
    ("--train_per_class=0", "--train_per_class must be at least 1"),
    ("--seed=-1", "--seed must be at least 0, not -1")])
def test_make_demo_dataset_bad_sizes_are_one_line(tmp_path, flag, message):
    code, stderr = run_tool("data_prep.make_demo_dataset", f"--output_dir={tmp_path / 'demo'}", flag)
    assert_one_line_error(code, stderr, message)
    assert os.listdir(tmp_path) == []


def test_make_demo_dataset_output_is_a_file_or_unwritable(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, stderr = run_tool("data_prep.make_demo_dataset", f"--output_dir={afile}", *DEMO_FLAGS)
    assert_one_line_error(code, stderr, "is a file, not a folder")
    code, stderr = run_tool("data_prep.make_demo_dataset", f"--output_dir={afile}/demo", *DEMO_FLAGS)
    assert_one_line_error(code, stderr, f"cannot write --output_dir {afile}/demo")
    assert afile.read_text() == "x"


def test_interrupted_demo_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_jpeg(pixels):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return b"jpeg"

    monkeypatch.setattr(demo_dataset, "_jpeg", failing_jpeg)
    with pytest.raises(PipelineError, match="No space left on device"):
        demo_dataset.make_demo_dataset(str(tmp_path / "demo"), num_classes=2, train_per_class=3, image_size=32)
    assert os.listdir(tmp_path) == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
