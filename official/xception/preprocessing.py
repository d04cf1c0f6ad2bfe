"""Inception-style image preprocessing for Xception: pure tensor functions.

Both paths take the encoded bytes of one image (JPEG or PNG, sniffed from the bytes, never from a file
name) and return an `[image_size, image_size, 3]` tensor with values in [-1, 1] (x / 127.5 - 1), the
input range of Keras's Xception weights.

`preprocess_for_eval` is deterministic and uses only graph ops on a scalar string, so the serving
signature calls the very same function and evaluation and serving cannot drift apart.
"""

import dataclasses
from typing import Tuple

import tensorflow as tf

from official.utils import image_decoding
from official.utils.errors import PipelineError

MIN_IMAGE_SIZE = 71
OUTPUT_DTYPES = (tf.float32, tf.bfloat16, tf.float16)

# sample_distorted_bounding_box gives up after this many tries and falls back to the whole image;
# 100 keeps the fallback rare for ImageNet's boxes (the Inception recipe's value).
_MAX_CROP_ATTEMPTS = 100


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Training augmentation: crop window sampling (relative to the boxes), flip, color distortion."""

    area_range: Tuple[float, float] = (0.05, 1.0)
    aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3)
    min_object_covered: float = 0.1
    random_flip: bool = True
    color_distortion: bool = False

    def __post_init__(self):
        low, high = self.area_range
        if not 0.0 < low <= high <= 1.0:
            raise PipelineError(
                f"augmentation area_range {self.area_range} is invalid: use 0 < low <= high <= 1")
        low, high = self.aspect_ratio_range
        if not 0.0 < low <= high:
            raise PipelineError(
                f"augmentation aspect_ratio_range {self.aspect_ratio_range} is invalid: "
                "use 0 < low <= high")
        if not 0.0 <= self.min_object_covered <= 1.0:
            raise PipelineError(
                f"augmentation min_object_covered {self.min_object_covered} is invalid: "
                "use a value in [0, 1]")


def check_image_size(image_size):
    """Raises PipelineError unless `image_size` is an int >= 71 (Xception's smallest input)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise PipelineError(
            f"image_size {image_size!r} is invalid: Xception needs an integer >= {MIN_IMAGE_SIZE}")


def check_output_dtype(dtype):
    """Returns `dtype` as a tf.DType; raises PipelineError unless it is float32, bfloat16 or float16."""
    try:
        dtype = tf.as_dtype(dtype)
    except TypeError:
        dtype = None
    if dtype not in OUTPUT_DTYPES:
        raise PipelineError(
            f"image dtype {dtype!r} is not supported: use one of "
            f"{', '.join(d.name for d in OUTPUT_DTYPES)}")
    return dtype


def check_central_fraction(central_fraction):
    """Raises PipelineError unless 0 < central_fraction <= 1."""
    if not 0.0 < central_fraction <= 1.0:
        raise PipelineError(
            f"eval central_fraction {central_fraction!r} is invalid: use a value in (0, 1] "
            "(0.875 is the Inception recipe)")


def _decode_window(image_bytes, window_fn):
    """Decodes only the window `window_fn(image_shape) -> (offset_hw, size_hw)` of the image.

    JPEGs are decoded with the fused decode_and_crop_jpeg (the shape comes from the header alone);
    other formats are decoded whole by image_decoding (the rule data_prep stores them by) and then sliced.
    """

    def decode_jpeg_window():
        offset, size = window_fn(tf.image.extract_jpeg_shape(image_bytes))
        window = tf.stack([offset[0], offset[1], size[0], size[1]])
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def decode_other_window():
        image = image_decoding.decode_rgb(image_bytes)
        offset, size = window_fn(tf.shape(image))
        return tf.slice(image, tf.concat([offset, [0]], 0), tf.concat([size, [3]], 0))

    image = tf.cond(tf.io.is_jpeg(image_bytes), decode_jpeg_window, decode_other_window)
    image.set_shape([None, None, 3])
    return image


def _resize(image, image_size):
    """[h, w, 3] -> float32 [image_size, image_size, 3] (bilinear, values kept in [0, 255])."""
    return tf.image.resize(image, [image_size, image_size], method=tf.image.ResizeMethod.BILINEAR)


def _scale_to_range(image, dtype):
    # Scaling in float32 and casting last keeps bfloat16/float16 outputs as exact as the format allows.
    image = tf.cast(image, tf.float32) / 127.5 - 1.0
    return tf.cast(image, dtype)


def _distort_color(image):
    """Inception color distortion on a float image in [0, 1].

    Random brightness, saturation, hue and contrast in one of two orders (picked at random per image),
    as in the Inception recipe; the result is clipped to [0, 1].
    """

    def brightness_first():
        out = tf.image.random_brightness(image, max_delta=32.0 / 255.0)
        out = tf.image.random_saturation(out, lower=0.5, upper=1.5)
        out = tf.image.random_hue(out, max_delta=0.2)
        return tf.image.random_contrast(out, lower=0.5, upper=1.5)

    def saturation_first():
        out = tf.image.random_saturation(image, lower=0.5, upper=1.5)
        out = tf.image.random_brightness(out, max_delta=32.0 / 255.0)
        out = tf.image.random_contrast(out, lower=0.5, upper=1.5)
        return tf.image.random_hue(out, max_delta=0.2)

    image = tf.cond(tf.random.uniform([]) < 0.5, brightness_first, saturation_first)
    return tf.clip_by_value(image, 0.0, 1.0)


def preprocess_for_train(image_bytes, bboxes, image_size, augmentation=AugmentationConfig(),
                         dtype=tf.float32):
    """Random box-guided crop, resize, random flip, optional color distortion; values in [-1, 1].

    Args:
      image_bytes: scalar string tensor, a JPEG or PNG.
      bboxes: float32 [1, N, 4] (ymin, xmin, ymax, xmax) in relative coordinates; N may be 0, then the
        crop is sampled from the whole image. Coordinates are clipped to [0, 1].
      image_size: output height and width (>= 71).
      augmentation: an AugmentationConfig.
      dtype: float32, bfloat16 or float16.

    Returns:
      [image_size, image_size, 3] tensor of `dtype`.
    """
    check_image_size(image_size)
    dtype = check_output_dtype(dtype)
    # Boxes converted from ImageNet's XML occasionally stick out of the image by a pixel, which
    # sample_distorted_bounding_box rejects outright.
    bboxes = tf.clip_by_value(tf.cast(bboxes, tf.float32), 0.0, 1.0)

    def sample_window(image_shape):
        offset, size, _ = tf.image.sample_distorted_bounding_box(
            image_shape,
            bounding_boxes=bboxes,
            min_object_covered=augmentation.min_object_covered,
            aspect_ratio_range=augmentation.aspect_ratio_range,
            area_range=augmentation.area_range,
            max_attempts=_MAX_CROP_ATTEMPTS,
            use_image_if_no_bounding_boxes=True)
        return offset[:2], size[:2]

    image = _decode_window(image_bytes, sample_window)
    if augmentation.random_flip:
        # Flipping commutes with the resize (its sampling grid is symmetric); the uint8 crop is a
        # quarter of the bytes of the float output, so flip it first.
        image = tf.image.random_flip_left_right(image)
    image = _resize(image, image_size)
    if augmentation.color_distortion:
        image = _distort_color(image / 255.0) * 255.0
    return _scale_to_range(image, dtype)


def central_window(image_shape, central_fraction):
    """The centred window covering `central_fraction` of each side: (offset_hw, size_hw), int32.

    offset = floor(side * (1 - fraction) / 2), size = side - 2 * offset, which equals
    tf.image.central_crop for the default 0.875.
    """
    sides = tf.cast(image_shape[:2], tf.float64)
    offset = tf.cast(tf.floor(sides * (1.0 - central_fraction) / 2.0), tf.int32)
    size = tf.cast(image_shape[:2], tf.int32) - 2 * offset
    return offset, size


def preprocess_for_eval(image_bytes, image_size, central_fraction=0.875, dtype=tf.float32):
    """Central crop of `central_fraction` of each side, resize; deterministic; values in [-1, 1].

    Args:
      image_bytes: scalar string tensor, a JPEG or PNG.
      image_size: output height and width (>= 71).
      central_fraction: fraction of each side kept, in (0, 1].
      dtype: float32, bfloat16 or float16.

    Returns:
      [image_size, image_size, 3] tensor of `dtype`.
    """
    check_image_size(image_size)
    check_central_fraction(central_fraction)
    dtype = check_output_dtype(dtype)
    image = _decode_window(image_bytes, lambda shape: central_window(shape, central_fraction))
    return _scale_to_range(_resize(image, image_size), dtype)
