"""A small, learnable raw dataset in the original ImageNet layout, for the demo and training tests.

Each class is a distinct shape in a distinct colour with its own texture, at a random position and scale
on a noisy background; the bounding box is the object's. Seeded: the same arguments give the same bytes.
"""

import dataclasses
import io
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw

from official.utils.errors import PipelineError

_SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "bar")
_COLOURS = (("red", (220, 40, 40)), ("green", (40, 190, 60)), ("blue", (50, 80, 230)),
            ("yellow", (235, 215, 40)), ("magenta", (210, 50, 200)), ("cyan", (40, 210, 220)),
            ("orange", (245, 140, 30)))
_TEXTURES = ("plain", "striped", "dotted")
JPEG_QUALITY = 90
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096  # 16 M pixels per image: well past any demo, and memory stays bounded
# Written last: its presence says the folder holds a complete demo dataset, made with these settings.
SETTINGS_NAME = "demo_dataset.json"


@dataclasses.dataclass(frozen=True)
class DemoClass:
    synset: str
    shape: str
    colour_name: str
    colour: tuple
    texture: str

    @property
    def text(self):
        return f"{self.texture} {self.colour_name} {self.shape}"


def demo_classes(num_classes):
    """Classes differ in shape and colour (and texture beyond the first few), in a fixed order."""
    max_classes = len(_SHAPES) * len(_COLOURS) * len(_TEXTURES)
    if not 1 <= num_classes <= max_classes:
        raise PipelineError(f"--num_classes must be between 1 and {max_classes}, not {num_classes}")
    classes = []
    for index in range(num_classes):
        # Walk shape and colour together so neighbouring classes differ in both.
        shape = _SHAPES[index % len(_SHAPES)]
        colour_name, colour = _COLOURS[(index + index // len(_SHAPES)) % len(_COLOURS)]
        texture = _TEXTURES[(index // (len(_SHAPES) * len(_COLOURS))) % len(_TEXTURES)]
        classes.append(DemoClass(f"n{index + 1:08d}", shape, colour_name, colour, texture))
    return classes


def _shape_polygon(shape, left, top, size):
    right, bottom = left + size, top + size
    middle_x, middle_y = left + size / 2, top + size / 2
    if shape == "triangle":
        return [(middle_x, top), (right, bottom), (left, bottom)]
    if shape == "diamond":
        return [(middle_x, top), (right, middle_y), (middle_x, bottom), (left, middle_y)]
    return None


def _draw_object(draw, demo_class, left, top, size, colour):
    right, bottom = left + size, top + size
    third = size / 3
    if demo_class.shape == "disc":
        draw.ellipse([left, top, right, bottom], fill=colour)
    elif demo_class.shape == "ring":
        draw.ellipse([left, top, right, bottom], outline=colour, width=max(2, int(size / 6)))
    elif demo_class.shape == "square":
        draw.rectangle([left, top, right, bottom], fill=colour)
    elif demo_class.shape == "cross":
        draw.rectangle([left + third, top, right - third, bottom], fill=colour)
        draw.rectangle([left, top + third, right, bottom - third], fill=colour)
    elif demo_class.shape == "bar":
        draw.rectangle([left, top + third, right, bottom - third], fill=colour)
    else:
        draw.polygon(_shape_polygon(demo_class.shape, left, top, size), fill=colour)


def render_image(demo_class, image_size, rng):
    """(RGB uint8 array, (xmin, ymin, xmax, ymax) pixel box of the object)."""
    background = rng.integers(70, 150, size=3)
    pixels = np.clip(background + rng.normal(0, 18, size=(image_size, image_size, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    size = int(rng.uniform(0.35, 0.75) * image_size)
    left = int(rng.integers(0, image_size - size + 1))
    top = int(rng.integers(0, image_size - size + 1))
    mask = Image.new("L", image.size, 0)
    _draw_object(ImageDraw.Draw(mask), demo_class, left, top, size - 1, 255)
    colour = np.clip(np.array(demo_class.colour) + rng.integers(-20, 21, size=3), 0, 255)
    layer = np.broadcast_to(colour, pixels.shape).astype(np.float64)
    if demo_class.texture == "striped":
        layer = layer * (0.6 + 0.4 * ((np.arange(image_size)[:, None, None] // 3) % 2))
    elif demo_class.texture == "dotted":
        grid = np.arange(image_size) % 4 < 2
        layer = layer * (0.6 + 0.4 * (grid[:, None] & grid[None, :])[..., None])
    alpha = np.asarray(mask, np.float64)[..., None] / 255.0
    result = np.asarray(image, np.float64) * (1 - alpha) + layer * alpha
    result = np.clip(result + rng.normal(0, 6, size=result.shape), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(np.asarray(mask))
    return result, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _jpeg(pixels):
    output = io.BytesIO()
    Image.fromarray(pixels).save(output, format="JPEG", quality=JPEG_QUALITY)
    return output.getvalue()


def _annotation_xml(synset, stem, image_size, box):
    xmin, ymin, xmax, ymax = box
    return (f"<annotation><folder>{synset}</folder><filename>{stem}</filename>"
            f"<size><width>{image_size}</width><height>{image_size}</height><depth>3</depth></size>"
            f"<object><name>{synset}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>\n")


def _write(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w") as output:
        output.write(data)


def _write_files(output_dir, classes, train_per_class, val_per_class, image_size, seed):
    rng = np.random.default_rng(seed)
    for demo_class in classes:
        synset = demo_class.synset
        os.makedirs(os.path.join(output_dir, "train", synset), exist_ok=True)
        os.makedirs(os.path.join(output_dir, "bboxes", synset), exist_ok=True)
        for index in range(1, train_per_class + 1):
            pixels, box = render_image(demo_class, image_size, rng)
            stem = f"{synset}_{index}"
            _write(os.path.join(output_dir, "train", synset, stem + ".JPEG"), _jpeg(pixels))
            _write(os.path.join(output_dir, "bboxes", synset, stem + ".xml"),
                   _annotation_xml(synset, stem, image_size, box))
    validation_classes = [demo_class for demo_class in classes for _ in range(val_per_class)]
    validation_classes = [validation_classes[i] for i in rng.permutation(len(validation_classes))]
    os.makedirs(os.path.join(output_dir, "val"), exist_ok=True)
    for number, demo_class in enumerate(validation_classes, start=1):
        pixels, _ = render_image(demo_class, image_size, rng)
        _write(os.path.join(output_dir, "val", f"ILSVRC2012_val_{number:08d}.JPEG"), _jpeg(pixels))
    _write(os.path.join(output_dir, "val_labels.txt"), "".join(c.synset + "\n" for c in validation_classes))
    _write(os.path.join(output_dir, "synsets.txt"), "".join(c.synset + "\n" for c in classes))
    _write(os.path.join(output_dir, "metadata.txt"), "".join(f"{c.synset}\t{c.text}\n" for c in classes))


def _previous_settings(output_dir):
    """The settings of the complete demo dataset in `output_dir`, None if it holds something else."""
    try:
        with open(os.path.join(output_dir, SETTINGS_NAME), encoding="utf-8") as settings_file:
            return json.load(settings_file)
    except (OSError, ValueError):
        return None


def make_demo_dataset(output_dir, num_classes=5, train_per_class=60, val_per_class=20, image_size=96, seed=0,
                      log=None):
    """Writes the dataset under `output_dir`; returns the list of DemoClass.

    The files are written in a fresh folder next to `output_dir` that replaces it (when missing or empty)
    only once complete, so an interrupted run leaves no half dataset and never touches other files. A
    folder holding this very dataset (same settings) is left as it is.
    """
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise PipelineError(f"--image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, not {image_size}")
    if train_per_class < 1 or val_per_class < 0:
        raise PipelineError("--train_per_class must be at least 1 and --val_per_class at least 0")
    if seed < 0:
        raise PipelineError(f"--seed must be at least 0, not {seed}")
    classes = demo_classes(num_classes)
    settings = {"num_classes": num_classes, "train_per_class": train_per_class, "val_per_class": val_per_class,
                "image_size": image_size, "seed": seed}
    output_dir = os.path.abspath(output_dir)
    if os.path.isfile(output_dir):
        raise PipelineError(f"--output_dir {output_dir} is a file, not a folder")
    try:
        existing = os.listdir(output_dir)
    except (FileNotFoundError, NotADirectoryError):
        existing = []  # creating it says what is wrong, if anything
    except OSError as error:
        raise PipelineError(f"cannot read --output_dir {output_dir}: {error.strerror or error}") from None
    if existing:
        if _previous_settings(output_dir) == settings:
            (log or sys.stderr).write(f"{output_dir} already holds this demo dataset; nothing written\n")
            return classes
        raise PipelineError(f"--output_dir {output_dir} is not empty and does not hold a demo dataset made with "
                            f"these settings; give a new or empty folder (nothing was written)")
    temporary = None
    try:
        os.makedirs(os.path.dirname(output_dir), exist_ok=True)
        os.mkdir(f"{output_dir}.incomplete-{os.getpid()}")  # unlike mkdtemp, honours the umask
        temporary = f"{output_dir}.incomplete-{os.getpid()}"
        _write_files(temporary, classes, train_per_class, val_per_class, image_size, seed)
        _write(os.path.join(temporary, SETTINGS_NAME), json.dumps(settings, indent=1) + "\n")
        os.replace(temporary, output_dir)  # fails, leaving it alone, if something appeared there meanwhile
        temporary = None
    except OSError as error:
        raise PipelineError(f"cannot write --output_dir {output_dir}: {error.strerror or error}") from None
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    return classes
