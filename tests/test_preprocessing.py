"""Preprocessing: value ranges and dtypes, the evaluation crop against PIL + hand-computed windows,
the box-guided training crop measured from coordinate-coded images, flips and color distortion."""

import io
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from official.utils.errors import PipelineError
from official.xception import preprocessing
from tests.record_fixtures import encode_image, random_photo

HEIGHT, WIDTH = 200, 250
NO_BOXES = np.zeros([1, 0, 4], np.float32)
NO_FLIP = preprocessing.AugmentationConfig(random_flip=False)


def coordinate_image():
    """Red = column index, green = row index: each output pixel tells where it came from."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([cols, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def to_pixels(image):
    """[-1, 1] output back to 0..255 floats."""
    return (np.asarray(tf.cast(image, tf.float32)) + 1.0) * 127.5


def crop_window(output):
    """(top, left, bottom, right) inclusive pixel rows/columns of the source seen in a crop output."""
    pixels = to_pixels(output)
    return pixels[..., 1].min(), pixels[..., 0].min(), pixels[..., 1].max(), pixels[..., 0].max()


@pytest.fixture(scope="module")
def photo():
    return random_photo(np.random.default_rng(1), 375, 500)


def test_central_window_matches_hand_computed_and_tf_central_crop():
    offset, size = preprocessing.central_window(tf.constant([375, 500, 3]), 0.875)
    # 375 * 0.0625 = 23.44 -> 23, 500 * 0.0625 = 31.25 -> 31.
    assert offset.numpy().tolist() == [23, 31]
    assert size.numpy().tolist() == [329, 438]
    reference = tf.image.central_crop(tf.zeros([375, 500, 3]), 0.875)
    assert reference.shape[:2] == (329, 438)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
def test_eval_png_equals_plain_crop_and_resize(dtype):
    pixels = random_photo(np.random.default_rng(2), 120, 90)
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(pixels, "PNG"))))
    # 120 * 0.0625 = 7.5 -> 7 rows off each side, 90 * 0.0625 = 5.6 -> 5 columns.
    reference_crop = decoded[7:113, 5:85].astype(np.float32)
    reference = tf.image.resize(reference_crop, [80, 80]).numpy() / 127.5 - 1.0

    output = preprocessing.preprocess_for_eval(
        tf.constant(encode_image(pixels, "PNG")), 80, dtype=dtype)

    assert output.shape == (80, 80, 3) and output.dtype == dtype
    tolerance = {tf.float32: 1e-5, tf.bfloat16: 1e-2, tf.float16: 1e-3}[dtype]
    np.testing.assert_allclose(tf.cast(output, tf.float32).numpy(), reference, atol=tolerance)


def test_eval_jpeg_close_to_pil_decode_crop_resize(photo):
    encoded = encode_image(photo, "JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")).astype(np.float32)
    reference = tf.image.resize(decoded[23:352, 31:469], [299, 299]).numpy() / 127.5 - 1.0

    output = preprocessing.preprocess_for_eval(tf.constant(encoded), 299).numpy()

    assert output.shape == (299, 299, 3) and output.dtype == np.float32
    assert output.min() >= -1.0 and output.max() <= 1.0
    # Two JPEG decoders may round the inverse DCT differently; the crop and resize must agree.
    assert np.abs(output - reference).mean() < 2.0 / 127.5
    assert np.abs(output - reference).max() < 12.0 / 127.5


def test_eval_is_deterministic_and_full_fraction_keeps_whole_image(photo):
    encoded = tf.constant(encode_image(photo, "JPEG"))
    first = preprocessing.preprocess_for_eval(encoded, 96).numpy()
    second = preprocessing.preprocess_for_eval(encoded, 96).numpy()
    np.testing.assert_array_equal(first, second)

    whole = preprocessing.preprocess_for_eval(encoded, 96, central_fraction=1.0).numpy()
    reference = tf.image.resize(tf.io.decode_jpeg(encoded), [96, 96]).numpy() / 127.5 - 1.0
    np.testing.assert_allclose(whole, reference, atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_become_rgb(photo, mode):
    buffer = io.BytesIO()
    Image.fromarray(photo).convert(mode).save(buffer, format="JPEG", quality=95)
    encoded = tf.constant(buffer.getvalue())
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    expected = tf.image.resize(reference[23:352, 31:469].astype(np.float32), [71, 71]).numpy()

    output = preprocessing.preprocess_for_eval(encoded, 71)
    assert output.shape == (71, 71, 3)
    assert np.abs(to_pixels(output) - expected).mean() < 3.0
    train_output = preprocessing.preprocess_for_train(encoded, NO_BOXES, 71)
    assert train_output.shape == (71, 71, 3)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_training_crops_cover_a_tenth_of_the_box(image_format):
    # A box of 4% of the image in one corner: crops sampled without regard to it often miss it.
    box = (0.05, 0.05, 0.25, 0.25)  # ymin, xmin, ymax, xmax
    box_top, box_left = box[0] * HEIGHT, box[1] * WIDTH
    box_bottom, box_right = box[2] * HEIGHT, box[3] * WIDTH
    box_area = (box_bottom - box_top) * (box_right - box_left)
    encoded = tf.constant(encode_image(coordinate_image(), image_format, quality=100))
    boxes = tf.constant([[box]], tf.float32)
    # Interpolation and JPEG rounding blur the measured window edges by about two pixels.
    slack = 2.5
    windows = set()
    for _ in range(25):
        top, left, bottom, right = crop_window(
            preprocessing.preprocess_for_train(encoded, boxes, 71, NO_FLIP))
        overlap_h = min(bottom + 1 + slack, box_bottom) - max(top - slack, box_top)
        overlap_w = min(right + 1 + slack, box_right) - max(left - slack, box_left)
        assert overlap_h > 0 and overlap_w > 0, (top, left, bottom, right)
        assert overlap_h * overlap_w >= 0.1 * box_area, (top, left, bottom, right)
        windows.add((round(top), round(left)))
    assert len(windows) > 5, "crops should vary"


def test_training_crops_without_boxes_respect_area_and_aspect():
    encoded = tf.constant(encode_image(coordinate_image(), "PNG"))
    areas = []
    for _ in range(25):
        top, left, bottom, right = crop_window(
            preprocessing.preprocess_for_train(encoded, NO_BOXES, 71, NO_FLIP))
        height, width = bottom - top + 1, right - left + 1
        areas.append(height * width / (HEIGHT * WIDTH))
        assert 0.75 * 0.93 <= width / height <= 4 / 3 * 1.07
    assert min(areas) >= 0.05 * 0.85 and max(areas) <= 1.0
    assert max(areas) - min(areas) > 0.2, "crop areas should vary"


def test_out_of_image_boxes_are_clipped_not_rejected():
    encoded = tf.constant(encode_image(coordinate_image(), "PNG"))
    boxes = tf.constant([[[-0.01, 0.2, 1.02, 0.9]]], tf.float32)
    output = preprocessing.preprocess_for_train(encoded, boxes, 71)
    assert output.shape == (71, 71, 3)


def flipped_fraction(augmentation, count=200):
    """Fraction of training outputs whose column gradient runs right-to-left."""
    encoded = tf.constant(encode_image(coordinate_image(), "PNG"))
    whole_image = dict(area_range=(1.0, 1.0), aspect_ratio_range=(0.5, 2.0))
    config = preprocessing.AugmentationConfig(**whole_image, random_flip=augmentation.random_flip)
    outputs = tf.data.Dataset.from_tensors(encoded).repeat(count).map(
        lambda image: preprocessing.preprocess_for_train(image, NO_BOXES, 71, config)).batch(count)
    images = next(iter(outputs)).numpy()
    return np.mean(images[:, 35, 0, 0] > images[:, 35, -1, 0])


def test_flips_occur_about_half_the_time():
    # Binomial(200, 0.5) falls outside [0.35, 0.65] with probability below 1e-4.
    assert 0.35 <= flipped_fraction(preprocessing.AugmentationConfig()) <= 0.65
    assert flipped_fraction(NO_FLIP) == 0.0


def test_color_distortion_changes_colors_within_range():
    pixels = random_photo(np.random.default_rng(3), 100, 100)
    encoded = tf.constant(encode_image(pixels, "PNG"))
    whole = dict(area_range=(1.0, 1.0), random_flip=False)
    plain = preprocessing.preprocess_for_train(
        encoded, NO_BOXES, 71, preprocessing.AugmentationConfig(**whole)).numpy()
    distorted_config = preprocessing.AugmentationConfig(**whole, color_distortion=True)
    distorted = [preprocessing.preprocess_for_train(encoded, NO_BOXES, 71, distorted_config).numpy()
                 for _ in range(4)]
    np.testing.assert_allclose(plain, tf.image.resize(pixels, [71, 71]) / 127.5 - 1.0, atol=1e-5)
    for image in distorted:
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert np.abs(image - plain).mean() > 0.01
    assert np.abs(distorted[0] - distorted[1]).mean() > 0.001


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_training_output_dtype(dtype):
    encoded = tf.constant(encode_image(coordinate_image(), "JPEG"))
    output = preprocessing.preprocess_for_train(encoded, NO_BOXES, 71, dtype=dtype)
    assert output.dtype == dtype and output.shape == (71, 71, 3)
    values = tf.cast(output, tf.float32).numpy()
    assert values.min() >= -1.0 and values.max() <= 1.0


@pytest.mark.parametrize("call, message", [
    (lambda b: preprocessing.preprocess_for_eval(b, 70), "image_size 70"),
    (lambda b: preprocessing.preprocess_for_eval(b, 299, central_fraction=0.0), "central_fraction"),
    (lambda b: preprocessing.preprocess_for_eval(b, 299, dtype=tf.int32), "dtype"),
    (lambda b: preprocessing.preprocess_for_train(b, NO_BOXES, 64.5), "image_size 64.5"),
    (lambda b: preprocessing.AugmentationConfig(area_range=(0.5, 0.1)), "area_range"),
])
def test_bad_arguments_raise_pipeline_error(call, message):
    with pytest.raises(PipelineError, match=message):
        call(tf.constant(b""))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
