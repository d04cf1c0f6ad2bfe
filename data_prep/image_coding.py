"""Deciding what to store for one raw image: its own bytes, an RGB JPEG conversion, or nothing.

Formats are detected from the bytes, never from the file name. RGB JPEGs are stored byte-for-byte after
TensorFlow's own decoder (the one training uses) has read them completely; anything else Pillow can read
(PNG, CMYK or grayscale JPEG, ...) is converted to an RGB JPEG of exactly the pixels serving decodes from
the original bytes (16-bit depth scaled, transparency on black: official.utils.image_decoding).
Imports TensorFlow: use only in workers.
"""

import dataclasses
import io
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from official.utils import image_decoding

from data_prep.file_kinds import JPEG_MAGIC
from official.utils.progress import StageTimes

# Our own pixel limit is checked from the header before any decoding; Pillow's must not fire first.
Image.MAX_IMAGE_PIXELS = None

CONVERTIBLE_FORMATS = ("PNG", "GIF", "BMP", "TIFF", "WEBP")
# Pillow's names of the formats serving's TensorFlow decoders read (MPO: multi-picture JPEG).
SERVING_DECODED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP")
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


def _pillow_pixels(image):
    """[h, w, c] uint8 or uint16 pixels of an image TensorFlow cannot decode, alpha kept, for the shared
    compositing rule."""
    mode = image.mode
    if mode in ("I", "F"):
        raise BadImageError(f"{image.format} with 32-bit {'integer' if mode == 'I' else 'float'} pixels is not "
                            f"supported; save it with 8 or 16 bits per channel")
    if mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16)  # also turns big-endian 16-bit into native order
    elif mode in ("L", "LA", "RGB", "RGBA"):
        pixels = np.asarray(image)
    elif mode == "1":
        pixels = np.asarray(image.convert("L"))
    elif mode in ("PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        pixels = np.asarray(image.convert("RGBA"))
    else:  # P, CMYK, YCbCr, LAB, HSV
        pixels = np.asarray(image.convert("RGB"))
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


def decode_pixels(data, image):
    """[h, w, 3] uint8 RGB of the raw bytes `data` (opened by Pillow as `image`): exactly what serving's
    decoder computes from the same bytes (official.utils.image_decoding). Formats it cannot read
    (TIFF, WebP, BMP variants it refuses) go through Pillow and then the same compositing rule."""
    if image.format in SERVING_DECODED_FORMATS:
        try:
            return image_decoding.decode_rgb(tf.constant(data)).numpy()
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            pass  # serving refuses these bytes too; Pillow may still read them (or says why not)
    try:
        image.load()
        pixels = _pillow_pixels(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(f"truncated or corrupt {image.format} ({error})") from None
    return image_decoding.composite_on_black(pixels).numpy()


def _to_rgb_jpeg(data, image, what):
    pixels = decode_pixels(data, image)
    output = io.BytesIO()
    Image.fromarray(pixels).save(output, format="JPEG", quality=CONVERSION_QUALITY, subsampling=0)
    return PreparedImage(output.getvalue(), pixels.shape[0], pixels.shape[1], what)


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
            return _to_rgb_jpeg(data, image, f"{_MODE_NAMES.get(image.mode, image.mode)} JPEG to RGB JPEG")
    with stage_times.stage("convert"):
        image = _open(data, CONVERTIBLE_FORMATS)
        _check_size(image, max_pixels)
        return _to_rgb_jpeg(data, image, f"{image.format} to JPEG")
