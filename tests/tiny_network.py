"""A tiny network with Xception's layer kinds and head name, for fast Estimator tests where the full
Xception is not the point. Same keyword arguments as xception_model.xception()."""

import tensorflow as tf


def tiny_network(num_classes=10, dropout_rate=0.0, image_size=71, data_format="channels_last",
                 compute_dtype="float32", batch_norm_momentum=None, batch_norm=True):
    """conv 3x3/2 -> BN -> ReLU -> separable conv -> BN -> ReLU -> average pool -> dropout -> dense.

    Like Xception, the layers compute in `compute_dtype` with float32 variables, and the head in float32.
    """
    # Momentum 0.5 always: the statistics must settle within the few steps of a test.
    del data_format, batch_norm_momentum
    policy = tf.keras.mixed_precision.Policy(
        "float32" if compute_dtype == "float32" else f"mixed_{compute_dtype}")
    layers = tf.keras.layers
    inputs = layers.Input(shape=(image_size, image_size, 3), name="images")
    x = layers.Conv2D(8, 3, strides=2, use_bias=False, name="block1_conv1", dtype=policy)(inputs)
    if batch_norm:
        x = layers.BatchNormalization(momentum=0.5, epsilon=1e-3, name="block1_conv1_bn",
                                      dtype=policy)(x)
    x = layers.Activation("relu", name="block1_conv1_act", dtype=policy)(x)
    x = layers.SeparableConv2D(16, 3, strides=2, use_bias=False, name="block2_sepconv1",
                               dtype=policy)(x)
    if batch_norm:
        x = layers.BatchNormalization(momentum=0.5, epsilon=1e-3, name="block2_sepconv1_bn",
                                      dtype=policy)(x)
    x = layers.Activation("relu", name="block2_sepconv1_act", dtype=policy)(x)
    x = layers.GlobalAveragePooling2D(name="global_pool", dtype=policy)(x)
    if dropout_rate > 0:
        x = layers.Dropout(dropout_rate, name="dropout", dtype=policy)(x)
    outputs = layers.Dense(num_classes, name="predictions", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs, name="tiny")


def tiny_network_without_batch_norm(**kwargs):
    return tiny_network(batch_norm=False, **kwargs)


# Variables the weight decay must cover in tiny_network (kernels only).
TINY_DECAYED = {"block1_conv1/kernel", "block2_sepconv1/depthwise_kernel",
                "block2_sepconv1/pointwise_kernel", "predictions/kernel"}
