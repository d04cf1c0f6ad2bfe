"""The Xception network (Chollet, arXiv 1610.02357), layer for layer equal to
`tf.keras.applications.Xception`, so that Keras's published ImageNet weights convert one to one.

The model knows nothing of losses, optimizers, flags or Estimator. It takes NHWC images in [-1, 1] and
returns float32 logits (or pooled features without the head). Layer names are Keras's; the four residual
shortcuts, which Keras leaves unnamed, are called `block{2,3,4,13}_residual_conv` / `_residual_bn` here.
"""

import tensorflow as tf

from official.utils.errors import PipelineError

MIN_IMAGE_SIZE = 71
DEFAULT_IMAGE_SIZE = 299
HEAD_LAYER_NAME = "predictions"
RESIDUAL_BLOCKS = (2, 3, 4, 13)
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
DATA_FORMATS = ("channels_last", "channels_first")

# Keras's BatchNormalization defaults, spelled out because the equivalence depends on them.
KERAS_BATCH_NORM_MOMENTUM = 0.99
_BN_EPSILON = 1e-3

# End point name -> the layer whose output it is.
END_POINT_LAYERS = {
    "block1": "block1_conv2_act",
    **{f"block{i}": f"block{i}_add" for i in range(2, 14)},
    "block14": "block14_sepconv2_act",
    "pooled": "global_pool",
    "logits": HEAD_LAYER_NAME,
}


def check_data_format_supported(data_format):
    """Raises PipelineError when this machine cannot run `data_format`.

    TensorFlow's CPU kernels for convolutions and pooling only run NHWC; channels_first is a GPU layout
    (cuDNN's native one), so without a GPU it would fail at the first step, after the graph was built.
    """
    if data_format not in DATA_FORMATS:
        raise PipelineError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    if data_format == "channels_first" and not tf.config.list_physical_devices("GPU"):
        raise PipelineError(
            "data_format=channels_first needs a GPU (TensorFlow's CPU kernels run channels_last only); "
            "use --data_format=channels_last on this machine")


def check_image_size(image_size):
    if image_size < MIN_IMAGE_SIZE:
        raise PipelineError(
            f"image_size must be at least {MIN_IMAGE_SIZE} for Xception (five stride-2 stages), "
            f"got {image_size}")


def _layer_policy(compute_dtype):
    if compute_dtype not in COMPUTE_DTYPES:
        raise PipelineError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    if compute_dtype == "float32":
        return tf.keras.mixed_precision.Policy("float32")
    # Variables stay float32; layers compute in the low-precision type.
    return tf.keras.mixed_precision.Policy(f"mixed_{compute_dtype}")


def xception(num_classes=1000, include_top=True, pooling="avg", dropout_rate=0.0,
             image_size=DEFAULT_IMAGE_SIZE, data_format="channels_last", compute_dtype="float32",
             batch_norm_momentum=KERAS_BATCH_NORM_MOMENTUM, name="xception"):
    """Builds Xception as a Keras functional model.

    Args:
      num_classes: size of the classifier (1000 for Keras's weights, 1001 with a background class).
      include_top: whether to add the `predictions` dense layer (logits, no softmax).
      pooling: global pooling after the last block, "avg" (the paper's and Keras's) or "max"; None keeps
        the final feature map (only without the top).
      dropout_rate: dropout before the classifier, active only when the model is called with
        training=True (the paper trains with 0.5).
      image_size: square input side, at least 71.
      data_format: "channels_last", or "channels_first" for GPUs; inputs are NHWC in both cases.
      compute_dtype: "float32", "bfloat16" or "float16"; variables and outputs stay float32.
      batch_norm_momentum: decay of the batch-norm moving statistics (Keras's 0.99; a short run
        needs less, e.g. 0.9, for the statistics to reach their data).
      name: the model's name.

    Returns:
      A `tf.keras.Model` from [batch, image_size, image_size, 3] images in [-1, 1] to float32 logits
      [batch, num_classes] (or features without the top).
    """
    check_image_size(image_size)
    check_data_format_supported(data_format)
    if pooling not in ("avg", "max", None):
        raise PipelineError(f"pooling must be 'avg', 'max' or None, got {pooling!r}")
    if include_top and pooling is None:
        raise PipelineError("the classifier head needs global pooling: pass pooling='avg' or 'max'")
    if not 0.0 <= dropout_rate < 1.0:
        raise PipelineError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if not 0.0 <= batch_norm_momentum < 1.0:
        raise PipelineError(f"batch_norm_momentum must be in [0, 1), got {batch_norm_momentum}")

    policy = _layer_policy(compute_dtype)
    layers = tf.keras.layers
    bn_axis = 1 if data_format == "channels_first" else -1

    def conv(filters, kernel, strides=1, padding="valid", name=None):
        return layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                             data_format=data_format, name=name, dtype=policy)

    def sepconv(filters, name):
        return layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                      data_format=data_format, name=name, dtype=policy)

    def batch_norm(name):
        return layers.BatchNormalization(axis=bn_axis, momentum=batch_norm_momentum, epsilon=_BN_EPSILON,
                                         name=name, dtype=policy)

    def relu(name):
        return layers.Activation("relu", name=name, dtype=policy)

    def max_pool(name):
        return layers.MaxPooling2D(3, strides=2, padding="same", data_format=data_format, name=name,
                                   dtype=policy)

    def downsampling_block(x, block, filters, relu_first=True):
        """Blocks 2-4 and 13: two separable convs, a max-pool, and a strided 1x1 conv shortcut."""
        residual = conv(filters[1], 1, strides=2, padding="same", name=f"block{block}_residual_conv")(x)
        residual = batch_norm(f"block{block}_residual_bn")(residual)
        if relu_first:
            x = relu(f"block{block}_sepconv1_act")(x)
        x = sepconv(filters[0], f"block{block}_sepconv1")(x)
        x = batch_norm(f"block{block}_sepconv1_bn")(x)
        x = relu(f"block{block}_sepconv2_act")(x)
        x = sepconv(filters[1], f"block{block}_sepconv2")(x)
        x = batch_norm(f"block{block}_sepconv2_bn")(x)
        x = max_pool(f"block{block}_pool")(x)
        return layers.Add(name=f"block{block}_add", dtype=policy)([x, residual])

    def middle_block(x, block):
        """Blocks 5-12: three ReLU-sepconv-BN units around an identity shortcut."""
        residual = x
        for unit in (1, 2, 3):
            x = relu(f"block{block}_sepconv{unit}_act")(x)
            x = sepconv(728, f"block{block}_sepconv{unit}")(x)
            x = batch_norm(f"block{block}_sepconv{unit}_bn")(x)
        return layers.Add(name=f"block{block}_add", dtype=policy)([x, residual])

    inputs = layers.Input(shape=(image_size, image_size, 3), name="images")
    x = inputs
    if data_format == "channels_first":
        x = layers.Permute((3, 1, 2), name="to_channels_first", dtype=policy)(x)

    # Entry flow.
    x = conv(32, 3, strides=2, name="block1_conv1")(x)
    x = batch_norm("block1_conv1_bn")(x)
    x = relu("block1_conv1_act")(x)
    x = conv(64, 3, name="block1_conv2")(x)
    x = batch_norm("block1_conv2_bn")(x)
    x = relu("block1_conv2_act")(x)
    # Block 2 follows a ReLU already, so it starts straight with its separable conv.
    x = downsampling_block(x, 2, (128, 128), relu_first=False)
    x = downsampling_block(x, 3, (256, 256))
    x = downsampling_block(x, 4, (728, 728))

    # Middle flow.
    for block in range(5, 13):
        x = middle_block(x, block)

    # Exit flow.
    x = downsampling_block(x, 13, (728, 1024))
    x = sepconv(1536, "block14_sepconv1")(x)
    x = batch_norm("block14_sepconv1_bn")(x)
    x = relu("block14_sepconv1_act")(x)
    x = sepconv(2048, "block14_sepconv2")(x)
    x = batch_norm("block14_sepconv2_bn")(x)
    x = relu("block14_sepconv2_act")(x)

    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(data_format=data_format, name="global_pool", dtype=policy)(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(data_format=data_format, name="global_pool", dtype=policy)(x)

    if include_top:
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="dropout", dtype=policy)(x)
        # The head computes in float32: logits feed a softmax, where low precision hurts most.
        outputs = layers.Dense(num_classes, name=HEAD_LAYER_NAME, dtype="float32")(x)
    else:
        outputs = layers.Activation("linear", name="features", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs, name=name)


def end_point_model(model):
    """A model with the same weights as `model` whose output is a dict of named end points.

    Keys are "block1" … "block14" (each block's output), "pooled" (the global pooling) and "logits", as
    far as `model` has them.
    """
    layer_names = {layer.name for layer in model.layers}
    outputs = {end_point: model.get_layer(layer).output
               for end_point, layer in END_POINT_LAYERS.items() if layer in layer_names}
    return tf.keras.Model(model.inputs, outputs, name=f"{model.name}_end_points")
