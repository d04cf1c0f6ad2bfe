"""imagenet_main's export: the SavedModel predicts like Estimator.predict and evaluates like
Estimator.evaluate on the same checkpoint; class count, split sizes and class names come from the
shards' build_summary.json; every start appends a provenance record that the exports carry, and the
run's report tables the evaluations of its event files."""

import hashlib
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
import tensorflow as tf

from official.utils import dataset_info
from official.utils import provenance
from official.utils.errors import PipelineError
from official.xception import evaluate_saved_model
from official.xception import export
from official.xception import imagenet_main
from official.xception import model_fn as model_fn_lib
from official.xception import preprocessing
from official.xception import report
from official.xception import run_record
from tests import export_fixtures
from tests import main_flags
from tests import record_fixtures
from tests import report_tables
from tests import tiny_network

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = export_fixtures.IMAGE_SIZE
NUM_VALIDATION = 13


_flags = main_flags.parse


@pytest.fixture(scope="module")
def validation_images():
    rng = np.random.default_rng(5)
    return [record_fixtures.encode_image(record_fixtures.random_photo(rng, 70 + 3 * i, 90 - 2 * i))
            for i in range(NUM_VALIDATION)]


@pytest.fixture(scope="module")
def checkpoint_and_shards(exported, validation_images, tmp_path_factory):
    """A copy of the shared Xception checkpoint (with averages) and labelled validation shards."""
    model_dir = tmp_path_factory.mktemp("copy") / "model"
    shutil.copytree(exported["model_dir"], model_dir)
    labels = np.random.default_rng(6).integers(1, export_fixtures.NUM_CLASSES + 1, NUM_VALIDATION)
    examples = [record_fixtures.make_example(encoded, int(label), 1, 1,
                                             filename=f"ILSVRC2012_val_{i + 1:08d}.JPEG")
                for i, (encoded, label) in enumerate(zip(validation_images, labels))]
    data_dir = tmp_path_factory.mktemp("validation")
    record_fixtures.write_shards(str(data_dir), "validation", examples, num_shards=2)
    record_fixtures.write_shards(str(data_dir), "train", examples[:2], num_shards=1)
    return str(model_dir), str(data_dir)


def _common(model_dir, data_dir):
    return dict(model_dir=model_dir, data_dir=data_dir, image_size=SIZE,
                num_classes=export_fixtures.NUM_CLASSES, batch_size=4, num_gpus=0,
                eval_examples=NUM_VALIDATION)


def test_export_only_predicts_and_evaluates_like_the_estimator(checkpoint_and_shards,
                                                              validation_images, tmp_path):
    model_dir, data_dir = checkpoint_and_shards
    export_dir = tmp_path / "export"
    imagenet_main.run(_flags(export_only=True, export_dir=export_dir, **_common(model_dir, data_dir)))
    (version,) = os.listdir(export_dir)
    saved_model_dir = str(export_dir / version)
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    served = serve(image_bytes=tf.constant(validation_images))

    flag_values = _flags(**_common(model_dir, data_dir))
    estimator = tf.estimator.Estimator(
        model_fn_lib.model_fn, model_dir=model_dir,
        params={"model_config": imagenet_main.make_model_config(flag_values, 4)})

    def predict_input_fn():
        images = tf.data.Dataset.from_tensor_slices(validation_images).map(
            lambda encoded: preprocessing.preprocess_for_eval(encoded, SIZE))
        return images.batch(4)

    predicted = np.stack([p["logits"] for p in estimator.predict(predict_input_fn)])
    np.testing.assert_allclose(served["logits"], predicted, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(served["classes"], predicted.argmax(axis=1))

    estimator_results = imagenet_main.run(_flags(eval_only=True, **_common(model_dir, data_dir)))
    saved_model_results = evaluate_saved_model.evaluate(saved_model_dir, data_dir, batch_size=5)
    assert estimator_results[model_fn_lib.EVAL_EXAMPLES_KEY] == saved_model_results["examples"]
    assert saved_model_results["examples"] == NUM_VALIDATION
    assert estimator_results[model_fn_lib.TOP_1_KEY] == pytest.approx(saved_model_results["top_1"])
    assert estimator_results[model_fn_lib.TOP_5_KEY] == pytest.approx(saved_model_results["top_5"])


def test_export_only_needs_a_checkpoint_and_an_export_dir(tmp_path):
    with pytest.raises(PipelineError, match="--export_only needs --export_dir"):
        imagenet_main.run(_flags(export_only=True, model_dir=tmp_path))
    with pytest.raises(PipelineError, match="holds no checkpoint"):
        imagenet_main.run(_flags(export_only=True, model_dir=tmp_path, export_dir=tmp_path / "e"))


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    """Shards built by data_prep from its demo dataset: 3 classes, labels 1..3, a build summary."""
    raw = tmp_path_factory.mktemp("raw")
    shards = tmp_path_factory.mktemp("shards")
    for command in (
            ["data_prep.make_demo_dataset", f"--output_dir={raw}", "--num_classes=3",
             "--train_per_class=8", "--val_per_class=3", "--image_size=72"],
            ["data_prep.build_imagenet_data", f"--train_directory={raw}/train",
             f"--validation_directory={raw}/val", f"--validation_labels_file={raw}/val_labels.txt",
             f"--imagenet_metadata_file={raw}/metadata.txt", f"--output_directory={shards}",
             "--train_shards=2", "--validation_shards=1", "--num_workers=1"]):
        result = subprocess.run([sys.executable, "-m", *command], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    return str(shards)


def test_class_count_and_split_sizes_come_from_the_summary(demo_shards, tmp_path):
    flag_values = _flags(data_dir=demo_shards, model_dir=tmp_path)
    info = imagenet_main.apply_dataset_info(flag_values)
    assert (flag_values.num_classes, flag_values.label_offset) == (3, 1)
    assert (flag_values.train_examples, flag_values.eval_examples) == (24, 9)
    assert [name for _, name, _ in info.classes] == sorted(name for _, name, _ in info.classes)
    # 1001-style: keeping label 0 as background makes one more output, named so.
    flag_values = _flags(data_dir=demo_shards, model_dir=tmp_path, label_offset=0)
    info = imagenet_main.apply_dataset_info(flag_values)
    assert flag_values.num_classes == 4
    assert info.class_names(0, 4)[0] == dataset_info.BACKGROUND


@pytest.mark.parametrize("flag, value", [("num_classes", 1000), ("train_examples", 1281167),
                                         ("eval_examples", 10)])
def test_a_flag_contradicting_the_summary_is_a_one_line_error(demo_shards, tmp_path, flag, value):
    with pytest.raises(PipelineError, match=f"--{flag}={value} contradicts .*build_summary.json") \
            as raised:
        imagenet_main.apply_dataset_info(_flags(data_dir=demo_shards, model_dir=tmp_path,
                                                **{flag: value}))
    assert "\n" not in str(raised.value)


def test_training_exports_a_model_that_names_the_classes(demo_shards, tmp_path):
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    imagenet_main.run(
        _flags(data_dir=demo_shards, model_dir=model_dir, export_dir=export_dir, image_size=SIZE,
               batch_size=8, train_epochs=1, num_gpus=0, moving_average_decay=0.5,
               dropout_rate=0.0, shuffle_buffer=32),
        model_builder=tiny_network.tiny_network)
    info = dataset_info.read_dataset_info(demo_shards)
    expected_names = [(name, text) for _, name, text in info.classes]
    assert dataset_info.read_class_names(str(model_dir)) == expected_names
    (version,) = os.listdir(export_dir)
    assert export.read_class_names(str(export_dir / version)) == expected_names
    outputs = export_fixtures.serve_first_validation_record(str(export_dir / version), demo_shards)
    names = [name.encode() for name, _ in expected_names]
    assert outputs["class_names"].numpy()[0] == names[int(outputs["classes"][0])]
    assert set(outputs["top_5_class_names"].numpy()[0]) == set(names)


@pytest.fixture(scope="module")
def resumed_run(demo_shards, tmp_path_factory):
    """A run of one epoch, resumed with other flags for a second, each exporting: (model dir, exports
    oldest first)."""
    model_dir = tmp_path_factory.mktemp("resumed") / "model"
    export_dir = model_dir / "export"
    common = dict(data_dir=demo_shards, model_dir=model_dir, export_dir=export_dir,
                  image_size=SIZE, batch_size=8, num_gpus=0, moving_average_decay=0.5,
                  dropout_rate=0.0, shuffle_buffer=32, seed=7)
    for values in (dict(train_epochs=1), dict(train_epochs=2, log_steps=2, base_learning_rate=0.01)):
        imagenet_main.run(_flags(**common, **values), model_builder=tiny_network.tiny_network)
    return model_dir, sorted(export_dir.iterdir(), key=lambda path: int(path.name))


def test_every_start_is_recorded_and_each_export_carries_the_record(demo_shards, resumed_run,
                                                                   tmp_path):
    model_dir, (first_export, second_export) = resumed_run
    records = provenance.read_records(str(model_dir / provenance.RECORD_NAME))
    assert [(r["event"], r["start_step"]) for r in records] == [("start", 0), ("resume", 3)]
    first, second = records
    assert (first["flags"]["train_epochs"], second["flags"]["train_epochs"]) == (1, 2)
    assert second["flags"]["base_learning_rate"] == 0.01 and "log_steps" in second["flags_given"]
    assert "log_steps" not in first["flags_given"]
    with open(os.path.join(demo_shards, dataset_info.SUMMARY_NAME), "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    for record in records:
        assert record["seed"] == 7
        assert record["dataset"]["build_summary_sha256"] == digest
        assert (record["dataset"]["train_examples"], record["dataset"]["eval_examples"]) == (24, 9)
        assert record["versions"]["tensorflow"] == tf.__version__
        assert record["cluster"]["replicas"] == 1 and record["cluster"]["global_batch"] == 8
        assert record["git"].get("commit") or record["git"].get("reason")
    # Each export carries the records written until then; it holds the averages and says so.
    assert run_record.read_export_records(str(first_export)) == records[:1]
    assert run_record.read_export_records(str(second_export)) == records
    assert export.read_export_info(str(second_export))["weights"] == "polyak_averages"
    evaluated = evaluate_saved_model.evaluate(str(second_export), demo_shards)
    assert "export of the Polyak averages of the weights at global step 6" in evaluated["provenance"][0]
    assert "resume at " in evaluated["provenance"][1]
    assert evaluated["provenance"][-1] == "  (1 earlier record in assets.extra/provenance.jsonl)"
    image = tmp_path / "photo.jpg"
    image.write_bytes(record_fixtures.encode_image(
        record_fixtures.random_photo(np.random.default_rng(0), 40, 50)))
    shown = subprocess.run([sys.executable, "-m", "official.xception.classify_image",
                            f"--saved_model_dir={second_export}", "--verbose", image],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.splitlines()[:len(evaluated["provenance"])] == evaluated["provenance"]


def _eval_events(eval_dir):
    """{step: {tag: value}} of the evaluation summaries, read with TensorFlow's own event iterator."""
    by_step = {}
    for path in tf.io.gfile.glob(os.path.join(eval_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    by_step.setdefault(event.step, {})[value.tag] = value.simple_value
    return by_step


def _overlay_charts(model_dir):
    """[[tag patterns] per chart] of the Custom Scalars layouts in the training directory."""
    charts = []
    for path in tf.io.gfile.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == custom_scalar_metadata.CONFIG_SUMMARY_TAG:
                    layout = layout_pb2.Layout.FromString(tf.make_ndarray(value.tensor).item())
                    charts += [list(chart.multiline.tag) for category in layout.category
                               for chart in category.chart]
    return charts


def test_the_report_tables_every_evaluation_and_draws_the_curves(resumed_run):
    model_dir, _ = resumed_run
    report_path, picture_path = report.write_report(str(model_dir))
    events = _eval_events(str(model_dir / "eval"))
    assert sorted(events) == [3, 6]
    # TensorBoard overlays each metric of the averages with the raw weights' (one layout per start).
    charts = _overlay_charts(str(model_dir))
    assert len(charts) == 6
    for key in (model_fn_lib.TOP_1_KEY, model_fn_lib.TOP_5_KEY,
                model_fn_lib.EVAL_CROSS_ENTROPY_KEY):
        tags = {key, model_fn_lib.RAW_WEIGHTS_PREFIX + key}
        assert tags <= set(events[6])
        assert any({tag for tag in events[6] if any(re.search(p, tag) for p in patterns)} == tags
                   for patterns in charts)
    rows = report_tables.evaluation_rows(open(report_path).read())
    raw = model_fn_lib.RAW_WEIGHTS_PREFIX
    assert [row["global step"] for row in rows] == ["3", "6"]
    for row in rows:
        expected = events[int(row["global step"])]
        assert float(row["epoch"]) == int(row["global step"]) / 3
        assert float(row["top-1 %"]) == pytest.approx(100 * expected[model_fn_lib.TOP_1_KEY],
                                                      abs=0.005)
        assert float(row["raw top-5 %"]) == pytest.approx(
            100 * expected[raw + model_fn_lib.TOP_5_KEY], abs=0.005)
        assert float(row["cross-entropy"]) == pytest.approx(
            expected[model_fn_lib.EVAL_CROSS_ENTROPY_KEY], abs=5e-5)
        assert float(row["raw cross-entropy"]) == pytest.approx(
            expected[raw + model_fn_lib.EVAL_CROSS_ENTROPY_KEY], abs=5e-5)
        assert int(row["examples"]) == 9
    text = open(report_path).read()
    assert "79.0 %" in text and "resume at " in text and "2 records in" in text
    report_tables.assert_picture(picture_path)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
