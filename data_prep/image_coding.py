"""Deciding what to store for one raw image: its own bytes, an RGB JPEG conversion, or nothing.

Formats are detected from the bytes, never from the file name. RGB JPEGs are stored byte-for-byte after
TensorFlow's own decoder (the one training uses) has read them completely; anything else Pillow can read
(PNG, CMYK or grayscale JPEG, ...) is converted to an RGB JPEG. Imports TensorFlow: use only in workers.
"""

import dataclasses
import io
import re

import tensorflow as tf
from PIL import Image

from data_prep.file_kinds import JPEG_MAGIC
from data_prep.progress import StageTimes

# Our own pixel limit is checked from the header before any decoding; Pillow's must not fire first.
Image.MAX_IMAGE_PIXELS = None

CONVERTIBLE_FORMATS = ("PNG", "GIF", "BMP", "TIFF", "WEBP")
CONVERSION_QUALITY = 95
# ratio=8 skips most of the inverse DCT but still reads the whole entropy-coded stream, so truncated or
# corrupt data fails exactly as in a full decode, at roughly the cost of one.
_VERIFY_RATIO = 8
_MODE_NAMES = {"L": "grayscale"}


class BadImageError(Exception):
    """The file cannot become a training record; the message is the reason shown to the user."""


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes
    height: int
    width: int
    conversion: str  # "" when the original bytes are stored, else what was converted, e.g. "PNG to JPEG"


def _open(data, formats):
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.UnidentifiedImageError:
        if data.startswith(JPEG_MAGIC):
            raise BadImageError("corrupt JPEG header") from None
        raise BadImageError(f"unknown image format (first bytes {data[:8].hex(' ')})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(f"corrupt image header ({error})") from None
    return image


def _check_size(image, max_pixels):
    width, height = image.size
    if width <= 0 or height <= 0:
        raise BadImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise BadImageError(f"image too large: {width}x{height} = {width * height:,} pixels exceeds "
                            f"--max_pixels={max_pixels:,} (a decompression bomb?)")


def _verify_jpeg(data, height, width):
    try:
        decoded_shape = tf.io.decode_jpeg(data, channels=3, ratio=_VERIFY_RATIO).shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        # TensorFlow wraps the decoder's message in op context ({{function_node ...}} ... [Op:DecodeJpeg]).
        message = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", error.message.splitlines()[0]).strip()
        raise BadImageError(f"truncated or corrupt JPEG ({message})") from None
    expected = (-(-height // _VERIFY_RATIO), -(-width // _VERIFY_RATIO), 3)
    if tuple(decoded_shape) != expected:
        raise BadImageError(f"JPEG header says {width}x{height} but the data decodes to another size")


def _to_rgb_jpeg(image, what):
    try:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent pixels have arbitrary colours underneath; show them on white as viewers do.
            rgba = image.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(f"truncated or corrupt {image.format} ({error})") from None
    output = io.BytesIO()
    rgb.save(output, format="JPEG", quality=CONVERSION_QUALITY, subsampling=0)
    return PreparedImage(output.getvalue(), rgb.height, rgb.width, what)


def prepare_image(data, max_pixels, stage_times=None):
    """PreparedImage for the raw bytes `data`, or BadImageError with the reason.

    `stage_times` (a StageTimes) accumulates the seconds spent verifying and converting.
    """
    stage_times = stage_times or StageTimes()
    if not data:
        raise BadImageError("empty file")
    if data.startswith(JPEG_MAGIC):
        with stage_times.stage("verify"):
            image = _open(data, ("JPEG",))  # also opens MPO (multi-picture) JPEGs
            _check_size(image, max_pixels)
            if image.mode == "RGB":
                _verify_jpeg(data, image.height, image.width)
                return PreparedImage(data, image.height, image.width, "")
        with stage_times.stage("convert"):
            return _to_rgb_jpeg(image, f"{_MODE_NAMES.get(image.mode, image.mode)} JPEG to RGB JPEG")
    with stage_times.stage("convert"):
        image = _open(data, CONVERTIBLE_FORMATS)
        _check_size(image, max_pixels)
        return _to_rgb_jpeg(image, f"{image.format} to JPEG")
