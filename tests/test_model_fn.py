"""model_fn: loss = cross-entropy + hand-checked L2 over the right variables, learning-rate schedules,
batch-norm statistics, Polyak averages in evaluation, and evaluation counting every example once."""

import dataclasses
import math
import sys

import numpy as np
import pytest
import tensorflow as tf

from official.utils.errors import PipelineError
from official.xception import input_pipeline
from official.xception import model_fn as model_fn_lib
from official.xception import xception_model
from tests import export_fixtures
from tests import record_fixtures
from tests import tiny_network

IMAGE_SIZE = 71
NUM_CLASSES = 5
RAW = model_fn_lib.RAW_WEIGHTS_PREFIX


def _learning_rate(**overrides):
    settings = dict(steps_per_epoch=10.0, global_batch_size=8, base_learning_rate=0.1,
                    base_batch_size=8)
    settings.update(overrides)
    return model_fn_lib.LearningRateConfig(**settings)


def _model_config(**overrides):
    settings = dict(learning_rate=_learning_rate(), num_classes=NUM_CLASSES, image_size=IMAGE_SIZE,
                    dropout_rate=0.0, weight_decay=1e-3, moving_average_decay=0.0)
    settings.update(overrides)
    return model_fn_lib.ModelConfig(**settings)


def _params(config, builder=tiny_network.tiny_network):
    return {"model_config": config, "model_builder": builder}


def _batch(seed, size=8):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, size=(size, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=size).astype(np.int32)
    return images, labels


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _variable_values(session, names):
    by_name = {v.op.name: v for v in tf.compat.v1.global_variables()}
    return {name: session.run(by_name[name]) for name in names}


def test_xception_decays_exactly_its_conv_separable_and_dense_kernels():
    with tf.Graph().as_default():
        model = xception_model.xception(num_classes=10, image_size=IMAGE_SIZE)
        names = {v.op.name for v in model_fn_lib.decayed_variables(model)}
        with_biases = {v.op.name for v in model_fn_lib.decayed_variables(model, decay_biases=True)}
    separable = ([(2, 1), (2, 2), (3, 1), (3, 2), (4, 1), (4, 2), (13, 1), (13, 2), (14, 1), (14, 2)]
                 + [(block, unit) for block in range(5, 13) for unit in (1, 2, 3)])
    expected = ({"block1_conv1/kernel", "block1_conv2/kernel", "predictions/kernel"}
                | {f"block{b}_residual_conv/kernel" for b in (2, 3, 4, 13)}
                | {f"block{b}_sepconv{u}/{kind}_kernel" for b, u in separable
                   for kind in ("depthwise", "pointwise")})
    assert len(expected) == 75
    assert names == expected
    assert with_biases == expected | {"predictions/bias"}


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_loss_is_cross_entropy_plus_hand_computed_l2(label_smoothing):
    weight_decay = 0.05
    config = _model_config(weight_decay=weight_decay, label_smoothing=label_smoothing)
    images, labels = _batch(seed=1)
    built = []

    def builder(**kwargs):
        built.append(tiny_network.tiny_network(**kwargs))
        return built[-1]

    with tf.Graph().as_default():
        spec = model_fn_lib.model_fn(tf.constant(images), tf.constant(labels),
                                     tf.estimator.ModeKeys.TRAIN, _params(config, builder))
        logits = built[0](tf.constant(images), training=True)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            loss, logits_value = session.run([spec.loss, logits])
            kernels = _variable_values(session, tiny_network.TINY_DECAYED)

    targets = np.eye(NUM_CLASSES)[labels] * (1 - label_smoothing) + label_smoothing / NUM_CLASSES
    cross_entropy = -(targets * _log_softmax(logits_value.astype(np.float64))).sum(axis=1).mean()
    l2 = weight_decay * sum(0.5 * (w.astype(np.float64) ** 2).sum() for w in kernels.values())
    assert l2 > 0.01 * cross_entropy  # the decay term is large enough to be seen
    np.testing.assert_allclose(loss, cross_entropy + l2, rtol=1e-5)


@pytest.mark.parametrize("schedule, step, expected", [
    # Paper: 0.1 * 0.94 ** floor(epoch / 2), staircase; 10 steps per epoch.
    ("exponential", 0, 0.1),
    ("exponential", 19, 0.1),
    ("exponential", 20, 0.094),
    ("exponential", 45, 0.1 * 0.94 ** 2),
    ("piecewise", 299, 0.1),
    ("piecewise", 301, 0.01),
    ("piecewise", 801, 0.0001),
    ("cosine", 0, 0.1),
    ("cosine", 250, 0.05),
    ("cosine", 500, 0.0),
    ("cosine", 900, 0.0),
])
def test_learning_rate_schedules(schedule, step, expected):
    config = _learning_rate(schedule=schedule, total_epochs=50)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        value = session.run(model_fn_lib.learning_rate_schedule(tf.constant(step, tf.int64), config))
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_learning_rate_scales_with_global_batch_and_warms_up_linearly():
    # 0.045 refers to a batch of 256, so a global batch of 1024 peaks at 0.18. Warm-up ramps towards
    # 0.18 for 5 epochs; then the schedule continues at its own epoch (0.18 * 0.94**2 at epoch 5).
    config = _learning_rate(base_learning_rate=0.045, base_batch_size=256, global_batch_size=1024,
                            warmup_epochs=5)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        steps = tf.constant([0, 10, 25, 49, 50], tf.int64)
        values = session.run(model_fn_lib.learning_rate_schedule(steps, config))
    np.testing.assert_allclose(values, [0.0, 0.036, 0.09, 0.18 * 49 / 50, 0.18 * 0.94 ** 2], rtol=1e-5)


def _estimator(model_dir, config, builder=tiny_network.tiny_network):
    return tf.estimator.Estimator(model_fn_lib.model_fn, model_dir=str(model_dir),
                                  params=_params(config, builder),
                                  config=tf.estimator.RunConfig(tf_random_seed=3))


def _trained(model_dir, config, seed, size=8, steps=1):
    """An Estimator of `config` trained `steps` steps of batch 8 on `size` random images, and those."""
    images, labels = _batch(seed=seed, size=size)
    estimator = _estimator(model_dir, config)
    estimator.train(_numpy_input_fn(images, labels, 8), steps=steps)
    return estimator, images, labels


def _numpy_input_fn(images, labels, batch_size, repeat=True):
    def input_fn():
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        return (dataset.repeat() if repeat else dataset).batch(batch_size)
    return input_fn


def _inference_logits(checkpoint, images, names_in_checkpoint):
    """The tiny network in Keras inference mode with its weights read by name from `checkpoint`."""
    reader = tf.train.load_checkpoint(checkpoint)
    model = tiny_network.tiny_network(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
    for weight in model.weights:
        name = weight.name.split(":")[0]
        weight.assign(reader.get_tensor(names_in_checkpoint.get(name, name)))
    return model(images, training=False).numpy(), model(images, training=True).numpy()


@pytest.mark.parametrize("average_statistics", [True, False])
def test_training_moves_batch_norm_statistics_and_evaluation_uses_the_averages(tmp_path,
                                                                              average_statistics):
    config = _model_config(moving_average_decay=0.5,
                           average_batch_norm_statistics=average_statistics)
    estimator, images, labels = _trained(tmp_path, config, seed=2, size=16, steps=4)
    checkpoint = tf.train.latest_checkpoint(str(tmp_path))
    reader = tf.train.load_checkpoint(checkpoint)
    for statistic, initial in [("moving_mean", 0.0), ("moving_variance", 1.0)]:
        for layer in ("block1_conv1_bn", "block2_sepconv1_bn"):
            values = reader.get_tensor(f"{layer}/{statistic}")
            assert np.abs(values - initial).max() > 1e-3, f"{layer}/{statistic} never updated"

    trainable = ["block1_conv1/kernel", "block1_conv1_bn/gamma", "block1_conv1_bn/beta",
                 "block2_sepconv1/depthwise_kernel", "block2_sepconv1/pointwise_kernel",
                 "block2_sepconv1_bn/gamma", "block2_sepconv1_bn/beta", "predictions/kernel",
                 "predictions/bias"]
    statistics = [f"{layer}/{statistic}" for layer in ("block1_conv1_bn", "block2_sepconv1_bn")
                  for statistic in ("moving_mean", "moving_variance")]
    averaged = trainable + statistics if average_statistics else trainable
    averages = {name: name + "/ExponentialMovingAverage" for name in averaged}
    in_checkpoint = set(reader.get_variable_to_shape_map())
    assert {name for name in in_checkpoint if name.endswith("/ExponentialMovingAverage")} == set(
        averages.values())
    for name in averaged:
        assert not np.allclose(reader.get_tensor(name), reader.get_tensor(averages[name])), name
    inference, batch_statistics = _inference_logits(checkpoint, images[:8], averages)
    assert np.abs(inference - batch_statistics).max() > 1e-3  # the oracle tells the two apart

    eval_images, eval_labels = images[:8], labels[:8]
    results = estimator.evaluate(_numpy_input_fn(eval_images, eval_labels, 8, repeat=False))
    expected = -_log_softmax(inference.astype(np.float64))[np.arange(8), eval_labels].mean()
    assert results[model_fn_lib.EVAL_CROSS_ENTROPY_KEY] == pytest.approx(expected, rel=1e-4)
    assert results[model_fn_lib.TOP_1_KEY] == pytest.approx(
        np.mean(inference.argmax(axis=1) == eval_labels))
    # The raw weights (and raw statistics) in the same pass: the checkpoint's values by their names.
    raw_inference, _ = _inference_logits(checkpoint, eval_images, {})
    raw_expected = -_log_softmax(raw_inference.astype(np.float64))[np.arange(8), eval_labels].mean()
    assert abs(raw_expected - expected) > 1e-3
    assert results[RAW + model_fn_lib.EVAL_CROSS_ENTROPY_KEY] == pytest.approx(raw_expected,
                                                                               rel=1e-4)
    assert results[RAW + model_fn_lib.TOP_1_KEY] == pytest.approx(
        np.mean(raw_inference.argmax(axis=1) == eval_labels))


def _evaluate(model_dir, config, images, labels):
    return _estimator(model_dir, config).evaluate(
        _numpy_input_fn(images, labels, 8, repeat=False))


def test_raw_and_averaged_weights_in_one_pass_follow_the_averaging_decay(tmp_path):
    images, labels = _batch(seed=10, size=16)
    metrics = (model_fn_lib.TOP_1_KEY, model_fn_lib.TOP_5_KEY, model_fn_lib.EVAL_CROSS_ENTROPY_KEY)
    # A decay of (almost) 0: each average is the weight itself, so both sides agree exactly.
    config = _model_config(moving_average_decay=1e-30)
    _estimator(tmp_path / "no_decay", config).train(_numpy_input_fn(images, labels, 8), steps=2)
    results = _evaluate(tmp_path / "no_decay", config, images, labels)
    assert {key: results[RAW + key] for key in metrics} == {key: results[key] for key in metrics}

    # A large decay after one step: with num_updates = global step = 1 the decay is
    # min(0.9999, 2 / 11), so each average is d * initial + (1 - d) * trained. A large step makes
    # the two sets of weights far apart.
    steep = _learning_rate(base_learning_rate=2.0)
    config = _model_config(moving_average_decay=0.9999, learning_rate=steep)
    _estimator(tmp_path / "decay", config).train(_numpy_input_fn(images, labels, 8), steps=1)
    initial = tf.train.load_checkpoint(str(tmp_path / "decay" / "model.ckpt-0"))
    trained = tf.train.load_checkpoint(str(tmp_path / "decay" / "model.ckpt-1"))
    decay = min(0.9999, 2 / 11)
    for name in ("block1_conv1/kernel", "predictions/kernel", "predictions/bias"):
        np.testing.assert_allclose(
            trained.get_tensor(name + "/ExponentialMovingAverage"),
            decay * initial.get_tensor(name) + (1 - decay) * trained.get_tensor(name),
            rtol=1e-5, atol=1e-7)
    both = _evaluate(tmp_path / "decay", config, images, labels)
    averages = {name: name + "/ExponentialMovingAverage" for name in
                (w.name.split(":")[0] for w in tiny_network.tiny_network(
                    num_classes=NUM_CLASSES, image_size=IMAGE_SIZE).trainable_weights)}
    checkpoint = str(tmp_path / "decay" / "model.ckpt-1")
    for prefix, names in (("", averages), (RAW, {})):
        logits, _ = _inference_logits(checkpoint, images, names)
        nll = -_log_softmax(logits.astype(np.float64))[np.arange(16), labels].mean()
        assert both[prefix + model_fn_lib.EVAL_CROSS_ENTROPY_KEY] == pytest.approx(nll, rel=1e-4)
    assert abs(both[model_fn_lib.EVAL_CROSS_ENTROPY_KEY]
               - both[RAW + model_fn_lib.EVAL_CROSS_ENTROPY_KEY]) > 1e-3

    # Each side alone: the averages without the raw side, the raw weights without averaging.
    averaged_alone = _evaluate(tmp_path / "decay", dataclasses.replace(
        config, evaluate_raw_weights=False), images, labels)
    raw_alone = _evaluate(tmp_path / "decay", _model_config(moving_average_decay=0.0), images,
                          labels)
    assert not any(key.startswith(RAW) for key in averaged_alone)
    for key in metrics:
        assert both[key] == pytest.approx(averaged_alone[key], rel=1e-6)
        assert both[RAW + key] == pytest.approx(raw_alone[key], rel=1e-6)


def test_checkpoint_without_averages_evaluates_raw_weights_with_a_warning(tmp_path, caplog):
    config = _model_config(moving_average_decay=0.0)
    estimator, images, labels = _trained(tmp_path, config, seed=4)
    # The same checkpoint read by a model_fn that averages: it must fall back to the raw weights.
    averaging = _estimator(tmp_path, _model_config(moving_average_decay=0.9))
    with caplog.at_level("WARNING"):
        results = averaging.evaluate(_numpy_input_fn(images, labels, 8, repeat=False))
    assert any("has no moving averages" in record.getMessage() for record in caplog.records)
    inference, _ = _inference_logits(tf.train.latest_checkpoint(str(tmp_path)), images, {})
    expected = -_log_softmax(inference.astype(np.float64))[np.arange(8), labels].mean()
    assert results[model_fn_lib.EVAL_CROSS_ENTROPY_KEY] == pytest.approx(expected, rel=1e-4)


def test_evaluation_cross_entropy_is_the_plain_nll_under_label_smoothing(tmp_path):
    config = _model_config(label_smoothing=0.3)
    estimator, images, labels = _trained(tmp_path, config, seed=6)
    results = estimator.evaluate(_numpy_input_fn(images, labels, 8, repeat=False))
    inference, _ = _inference_logits(tf.train.latest_checkpoint(str(tmp_path)), images, {})
    log_probabilities = _log_softmax(inference.astype(np.float64))
    nll = -log_probabilities[np.arange(8), labels].mean()
    targets = np.eye(NUM_CLASSES)[labels] * 0.7 + 0.3 / NUM_CLASSES
    smoothed = -(targets * log_probabilities).sum(axis=1).mean()
    assert abs(nll - smoothed) > 10 * 1e-4 * nll  # far outside the tolerance below
    assert results[model_fn_lib.EVAL_CROSS_ENTROPY_KEY] == pytest.approx(nll, rel=1e-4)


def test_a_checkpoint_with_the_averages_of_only_some_weights_is_an_error(tmp_path):
    config = _model_config(moving_average_decay=0.9)
    estimator, images, labels = _trained(tmp_path, config, seed=8)
    export_fixtures.rewrite_checkpoint_without(tf.train.latest_checkpoint(str(tmp_path)),
                                               "predictions/bias/ExponentialMovingAverage")
    with pytest.raises(PipelineError, match=r"moving averages of only 8 of 9 trainable variables "
                                            r"\(not of predictions/bias\)") as raised:
        estimator.evaluate(_numpy_input_fn(images, labels, 8, repeat=False))
    assert "\n" not in str(raised.value)


def test_evaluation_counts_every_record_once_with_a_partial_last_batch(tmp_path):
    labels = [1 + i % NUM_CLASSES for i in range(11)]  # 1-based, as the established tools write
    record_fixtures.write_labelled_split(str(tmp_path / "data"), "validation", labels, num_shards=3)
    config = _model_config()
    estimator, _, _ = _trained(tmp_path / "model", config, seed=5)

    def eval_input_fn():
        return input_pipeline.input_fn(False, str(tmp_path / "data"), 4, image_size=IMAGE_SIZE,
                                       num_classes=NUM_CLASSES, label_offset=1)

    results = estimator.evaluate(eval_input_fn)
    assert results[model_fn_lib.EVAL_EXAMPLES_KEY] == 11
    logits = np.stack([p["logits"] for p in estimator.predict(eval_input_fn)])
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        record_labels = np.concatenate(
            [batch[1] for batch in _all_batches(session, eval_input_fn())])
    assert len(logits) == len(record_labels) == 11
    assert sorted(record_labels.tolist()) == sorted(label - 1 for label in labels)
    expected = -_log_softmax(logits.astype(np.float64))[np.arange(11), record_labels].mean()
    assert results[model_fn_lib.EVAL_CROSS_ENTROPY_KEY] == pytest.approx(expected, rel=1e-4)
    assert results[model_fn_lib.TOP_1_KEY] == pytest.approx(
        np.mean(logits.argmax(axis=1) == record_labels))


def _all_batches(session, dataset):
    next_batch = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    batches = []
    while True:
        try:
            batches.append(session.run(next_batch))
        except tf.errors.OutOfRangeError:
            return batches


def test_each_replica_draws_from_its_own_seed():
    config = tf.estimator.RunConfig(tf_random_seed=7)
    assert model_fn_lib._replica_seed(config) == 7
    assert model_fn_lib._replica_seed(tf.estimator.RunConfig()) is None
    seeds = []
    with tf.Graph().as_default():
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        strategy.extended.call_for_each_replica(
            lambda: seeds.append(model_fn_lib._replica_seed(config)))
    # Otherwise every replica would draw the same dropout masks for its own part of the batch.
    assert sorted(seeds) == [7, 8]


def test_unknown_layer_with_weights_is_not_silently_left_undecayed():
    with tf.Graph().as_default():
        inputs = tf.keras.Input((4, 3))
        outputs = tf.keras.layers.Conv1D(2, 1, name="unknown_kind")(inputs)
        model = tf.keras.Model(inputs, outputs)
        with pytest.raises(TypeError, match="unknown_kind"):
            model_fn_lib.decayed_variables(model)


def test_learning_rate_config_rejects_bad_values_in_one_line():
    with pytest.raises(PipelineError, match="--learning_rate_schedule"):
        _learning_rate(schedule="linear")
    with pytest.raises(PipelineError, match="--fine_tune"):
        _model_config(fine_tune=True)
    assert math.isclose(_learning_rate(global_batch_size=32).scaled_learning_rate, 0.4)



@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_underlying_variable_is_the_float32_variable_the_graph_saves(policy):
    graph = tf.Graph()
    with graph.as_default():
        layer = tf.keras.layers.Dense(3, dtype=tf.keras.mixed_precision.Policy(policy))
        layer(tf.zeros([1, 2]))
        saved = {id(v) for v in tf.compat.v1.global_variables()}
        for weight in layer.weights:
            variable = model_fn_lib.underlying_variable(weight)
            assert id(variable) in saved and variable.dtype == tf.float32
            # Only a mixed-precision layer wraps its variables; the wrapper is not what is saved.
            assert (variable is weight) == (policy == "float32")
            assert (id(weight) in saved) == (policy == "float32")

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
