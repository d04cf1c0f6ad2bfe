"""Encoded image bytes → 8-bit RGB pixels: the one decoding rule shared by data preparation and serving.

data_prep stores what `decode_rgb` computes from the original bytes (re-encoded as JPEG), and the serving
signature runs the very same ops inside the SavedModel, so a PNG or GIF gives the network the same pixels
whether it was trained on or sent to the server. Pure TensorFlow ops on tensors.

The rule:
- JPEG: TensorFlow's libjpeg decoder with 3 output channels (grayscale is repeated, CMYK converted).
- Every other format is decoded at its own bit depth and scaled exactly to [0, 1] (16-bit values are not
  clipped), grayscale becomes RGB, and transparency is composited onto black: each colour channel is
  multiplied by the pixel's opacity, then rounded to the nearest 8-bit value. Black is the one background
  every format can follow: TensorFlow's GIF decoder already renders transparent pixels black and exposes
  no alpha. Colour-key transparency of grayscale and RGB PNGs (a tRNS chunk without a palette) is not
  applied by TensorFlow's PNG decoder; those pixels keep their stored colour.
"""

import tensorflow as tf


def composite_on_black(image):
    """[h, w, c] pixels (uint8, uint16, or float32 in [0, 1]), c = 1 (gray), 2 (gray + alpha), 3 (RGB) or
    4 (RGBA), static or not → [h, w, 3] uint8 RGB with transparency composited onto black."""
    image = tf.convert_to_tensor(image)
    if image.dtype not in (tf.uint8, tf.uint16, tf.float32):
        raise ValueError(f"expected uint8, uint16 or float32 pixels, got {image.dtype.name}")
    values = tf.image.convert_image_dtype(image, tf.float32)  # x / 255 or x / 65535
    channels = tf.shape(values)[2]
    has_alpha = tf.equal(channels % 2, 0)
    opacity = tf.cond(has_alpha, lambda: values[:, :, channels - 1:], lambda: tf.ones_like(values[:, :, :1]))
    colour = tf.cond(channels >= 3, lambda: values[:, :, :3], lambda: values[:, :, :1])
    colour = tf.broadcast_to(colour, tf.concat([tf.shape(values)[:2], [3]], 0))
    return tf.cast(tf.round(colour * opacity * 255.0), tf.uint8)


def decode_rgb(image_bytes):
    """Scalar string tensor (JPEG, PNG, GIF or BMP; the first frame of animations) → [h, w, 3] uint8 RGB."""

    def decode_jpeg():
        return tf.io.decode_jpeg(image_bytes, channels=3)

    def decode_other():
        # Scaled to [0, 1] from the file's own bit depth (asking for uint16 would shift 8-bit values by 256,
        # not 257), with its own channels, alpha kept.
        values = tf.io.decode_image(image_bytes, channels=0, dtype=tf.float32, expand_animations=False)
        return composite_on_black(values)

    image = tf.cond(tf.io.is_jpeg(image_bytes), decode_jpeg, decode_other)
    image.set_shape([None, None, 3])
    return image
