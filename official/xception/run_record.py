"""The provenance record of an Xception run (docs/DESIGN.md §11): every start or resume of
imagenet_main's training appends one to MODEL_DIR/provenance.jsonl, convert_keras_weights one for the
weights it converted, and each export carries the file of its model directory in
`assets.extra/provenance.jsonl`.

A record is official/utils/provenance.environment() plus: every flag value (and which were given),
the seed, the global step training starts from, the cluster and replicas, and the dataset (the
SHA-256 of its build_summary.json and the split sizes).
"""

import os

from absl import logging
import tensorflow as tf

from official.utils import dataset_info
from official.utils import provenance

EXPORT_RECORD = os.path.join("assets.extra", provenance.RECORD_NAME)


def record_path(directory):
    return os.path.join(directory, provenance.RECORD_NAME)


def _flag_values(flags_obj):
    """({name: value}, [names given]) of every flag but absl's own (logging, help, profiling)."""
    values, given = {}, []
    for module, module_flags in flags_obj.flags_by_module_dict().items():
        if module.startswith("absl."):
            continue
        for flag in module_flags:
            values[flag.name] = flag.value
            if flag.present:
                given.append(flag.name)
    return values, sorted(given)


def _dataset(flags_obj):
    if flags_obj.use_synthetic_data or not flags_obj.data_dir:
        return {"synthetic": True}
    summary = os.path.join(flags_obj.data_dir, dataset_info.SUMMARY_NAME)
    return {
        "data_dir": flags_obj.data_dir,
        "build_summary_sha256": (provenance.file_sha256(summary) if tf.io.gfile.exists(summary)
                                 else None),
        "train_examples": flags_obj.train_examples,
        "eval_examples": flags_obj.eval_examples,
        "num_classes": flags_obj.num_classes,
        "label_offset": flags_obj.label_offset,
    }


def training_record(flags_obj, tf_config, num_replicas, start_step):
    """The record of a training start (or resume, from `start_step` > 0)."""
    record = provenance.environment("resume" if start_step else "start")
    record["flags"], record["flags_given"] = _flag_values(flags_obj)
    record["seed"] = flags_obj.seed
    record["start_step"] = start_step
    record["cluster"] = {
        "tasks": {task_type: len(hosts) for task_type, hosts
                  in tf_config.get("cluster", {}).items()},
        "task": tf_config.get("task"),
        "replicas": num_replicas,
        "global_batch": flags_obj.batch_size,
    }
    record["dataset"] = _dataset(flags_obj)
    return record


def write_training_record(model_dir, flags_obj, tf_config, num_replicas, start_step):
    path = provenance.append_record(
        model_dir, training_record(flags_obj, tf_config, num_replicas, start_step))
    logging.info("Provenance of this run appended to %s", path)


def read_export_records(saved_model_dir):
    """The records an export carries ([] for exports made before records existed)."""
    return provenance.read_records(os.path.join(saved_model_dir, EXPORT_RECORD))


def conversion_record(source, num_classes):
    """The record of Keras weights converted into a checkpoint."""
    record = provenance.environment("convert_keras_weights")
    record["source"] = {"path": os.path.abspath(source), "sha256": provenance.file_sha256(source),
                        "num_classes": num_classes}
    return record


def describe(record):
    """Two or three lines for people: what ran, with which code and libraries, on what, from which
    data."""
    lines = [provenance.describe_environment(record)]
    if "start_step" in record:
        run_cluster = record.get("cluster", {})
        tasks = run_cluster.get("tasks")
        replicas = run_cluster.get("replicas")
        flags_given = record.get("flags_given", [])
        lines.append(
            f"  from global step {record['start_step']}, "
            + (f"seed {record['seed']}" if record.get("seed") is not None else "no seed")
            + f", {replicas} "
            f"replica{'s' if replicas != 1 else ''} "
            + ("over " + ", ".join(f"{count} {task_type}" for task_type, count in tasks.items())
               if tasks else "in one process")
            + f", global batch {run_cluster.get('global_batch')}; flags given: "
            + (" ".join(f"--{name}={record['flags'].get(name)}" for name in flags_given)
               or "none"))
        data = record.get("dataset", {})
        if data.get("synthetic"):
            lines.append("  data: synthetic")
        else:
            digest = data.get("build_summary_sha256")
            lines.append(
                f"  data: {data.get('data_dir')} ({data.get('train_examples')} training, "
                f"{data.get('eval_examples')} validation images, {data.get('num_classes')} classes; "
                + (f"build_summary.json sha256 {digest[:16]}" if digest
                   else "no build_summary.json") + ")")
    if "source" in record:
        source = record["source"]
        lines.append(f"  converted {source.get('path')} (sha256 {source.get('sha256')})")
    return lines


def export_summary(export_info, records):
    """Lines for people: which weights an export holds, and the latest record of the runs that made
    it."""
    weights = {"polyak_averages": "the Polyak averages of the weights",
               "raw": "the raw weights"}.get(export_info.get("weights"), "weights")
    lines = [f"export of {weights} at global step {export_info.get('global_step')} of "
             f"{export_info.get('checkpoint')}"]
    if not records:
        return lines + ["  no provenance record (exported before records were kept)"]
    lines += describe(records[-1])
    if len(records) > 1:
        earlier = len(records) - 1
        lines.append(f"  ({earlier} earlier record{'s' if earlier > 1 else ''} in {EXPORT_RECORD})")
    return lines
