"""data_prep.image_coding: whatever it accepts, TensorFlow's full decoder reads at the recorded size;
plus the progress line format."""

import io
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep.image_coding import BadImageError, prepare_image
from official.utils.progress import ProgressReporter
from tests import data_prep_fixtures as fixtures

MAX_PIXELS = 10_000_000


def corruptions(jpeg, rng, count):
    for _ in range(count):
        kind = rng.integers(3)
        data = bytearray(jpeg)
        if kind == 0:
            for position in rng.integers(2, len(data), size=rng.integers(1, 6)):
                data[position] = rng.integers(256)
        elif kind == 1:
            del data[rng.integers(2, len(data)):]
        else:
            position = rng.integers(2, len(data))
            data[position:position] = rng.bytes(int(rng.integers(1, 64)))
        yield bytes(data)


def test_every_accepted_corrupt_jpeg_decodes_fully_in_tensorflow_at_the_recorded_size():
    rng = np.random.default_rng(7)
    jpeg = fixtures.encode(fixtures.noisy_image(rng, (90, 120, 150), 48, 64), quality=90)
    accepted = rejected = 0
    for data in corruptions(jpeg, rng, 150):
        try:
            prepared = prepare_image(data, MAX_PIXELS)
        except BadImageError:
            rejected += 1
            continue
        accepted += 1
        decoded = tf.io.decode_jpeg(prepared.jpeg, channels=3)  # full decode, as training does
        assert decoded.shape == (prepared.height, prepared.width, 3)
    assert accepted > 10 and rejected > 10, (accepted, rejected)


def test_transparent_png_pixels_become_black_and_gif_converts():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (0, 0, 255, 255)          # opaque blue top half
    rgba[4:] = (255, 255, 0, 0)          # fully transparent bottom half, yellow underneath
    prepared = prepare_image(fixtures.encode(rgba, "PNG"), MAX_PIXELS)
    decoded = tf.io.decode_jpeg(prepared.jpeg).numpy().astype(int)
    assert prepared.conversion == "PNG to JPEG" and (prepared.height, prepared.width) == (8, 8)
    assert np.abs(decoded[:2] - (0, 0, 255)).max() < 20 and np.abs(decoded[6:]).max() < 20
    gif = io.BytesIO()
    Image.new("P", (5, 7)).save(gif, format="GIF")
    assert prepare_image(gif.getvalue(), MAX_PIXELS).conversion == "GIF to JPEG"


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    jpeg = fixtures.encode(np.zeros((16, 16, 3), np.uint8))
    assert prepare_image(jpeg, 256).jpeg == jpeg
    with pytest.raises(BadImageError, match="16x16 = 256 pixels exceeds --max_pixels=255"):
        prepare_image(jpeg, 255)


def test_progress_line_shows_count_rate_and_eta():
    now = [0.0]
    stream = io.StringIO()
    progress = ProgressReporter("build", 1000, interval=5.0, stream=stream, clock=lambda: now[0])
    now[0] = 1.0
    progress.advance(10)                 # within the interval: silent
    now[0] = 10.0
    progress.advance(240)
    progress.exclude(500)                # e.g. reused shards leave the total
    now[0] = 20.0
    progress.advance(250)
    assert stream.getvalue().splitlines() == [
        "build: 250/1,000 images (25.0%), 25.0 images/s, ETA 30s",
        "build: 500/500 images (100.0%), 25.0 images/s, done in 20s",
    ]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
