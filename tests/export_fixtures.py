"""A small trained-looking checkpoint (random weights, Polyak averages that differ from them) and its
export, shared by the export and SavedModel-evaluation tests."""

import os

import numpy as np
import tensorflow as tf

from official.xception import xception_model

IMAGE_SIZE = 71
NUM_CLASSES = 5
GLOBAL_STEP = 7
CLASS_NAMES = [(f"n0000000{i}", f"class {i} text") for i in range(NUM_CLASSES)]


def _random_like(rng, variable):
    name, shape = variable.name, variable.shape
    if "gamma" in name:  # small enough that activations stay of order one through the residual adds
        return rng.uniform(0.2, 0.5, shape).astype(np.float32)
    if "moving_variance" in name:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if "beta" in name or "moving_mean" in name or "bias" in name:
        return rng.normal(0.0, 0.2, shape).astype(np.float32)
    fan_in = np.prod(shape[:2]) if "depthwise" in name else np.prod(shape[:-1])
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)


def write_checkpoint(model_dir, seed=0):
    """Writes `model_dir/model.ckpt-7` as training would name it: the network's variables, global_step
    and an ExponentialMovingAverage shadow of every trainable variable.

    Returns:
      (raw weights, averaged weights): lists aligned with `xception_model.xception(...).weights`, the
      averaged list holding the shadow values for trainable variables and the raw ones otherwise.
    """
    rng = np.random.default_rng(seed)
    with tf.Graph().as_default():
        model = xception_model.xception(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
        raw = [_random_like(rng, v) for v in model.weights]
        trainable = {v.ref() for v in model.trainable_weights}
        averaged = [value * 0.9 + 0.01 if v.ref() in trainable else value
                    for v, value in zip(model.weights, raw)]
        variables = {v.op.name: tf.Variable(value) for v, value in zip(model.weights, raw)}
        variables.update({f"{v.op.name}/ExponentialMovingAverage": tf.Variable(value)
                          for v, value in zip(model.weights, averaged) if v.ref() in trainable})
        variables["global_step"] = tf.Variable(np.int64(GLOBAL_STEP))
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver(variables).save(session, f"{model_dir}/model.ckpt",
                                                      global_step=GLOBAL_STEP)
    return raw, averaged


def model_with(weights):
    """An eager network holding `weights` (the oracle the exports are compared with)."""
    model = xception_model.xception(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
    model.set_weights(weights)
    return model


def rewrite_checkpoint_without(checkpoint_path, dropped_name):
    """Rewrites the checkpoint at `checkpoint_path` in place without the variable `dropped_name`."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    kept = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != dropped_name}
    assert len(kept) < len(reader.get_variable_to_shape_map()), f"no {dropped_name} to drop"
    with tf.Graph().as_default():
        saver = tf.compat.v1.train.Saver({name: tf.Variable(value) for name, value in kept.items()})
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, checkpoint_path, write_meta_graph=False, write_state=False)


def serve_first_validation_record(saved_model_dir, data_dir):
    """The SavedModel's serving_default outputs for the first record of `data_dir`'s validation shards,
    sent as the JPEG bytes a client would send."""
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    record = next(iter(tf.data.TFRecordDataset(
        tf.io.gfile.glob(os.path.join(data_dir, "validation-*")))))
    encoded = tf.io.parse_single_example(
        record, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})["image/encoded"]
    return serve(image_bytes=tf.reshape(encoded, [1]))
