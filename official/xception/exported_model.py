"""Opens an export of imagenet_main for evaluate_saved_model and classify_image, with one-line errors
for the usual mistakes: the export base instead of a version directory, a folder that is not a
SavedModel, a damaged export_info.json or SavedModel."""

import dataclasses
import os
from typing import List, Optional, Tuple

import tensorflow as tf

from official.utils.errors import PipelineError
from official.xception import export
from official.xception import run_record

_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_REQUIRED_INFO = ("num_classes", "label_offset")


@dataclasses.dataclass
class OpenedExport:
    info: dict
    serve: tf.types.experimental.ConcreteFunction
    class_names: Optional[List[Tuple[str, str]]]
    # The provenance records of the runs that made the checkpoint (run_record), oldest first.
    provenance: List[dict] = dataclasses.field(default_factory=list)


def _is_saved_model(path):
    return any(os.path.isfile(os.path.join(path, name)) for name in _SAVED_MODEL_FILES)


def check_version_dir(saved_model_dir, flag):
    """Raises PipelineError unless `saved_model_dir` is one SavedModel directory."""
    if not os.path.isdir(saved_model_dir):
        what = "is a file" if os.path.exists(saved_model_dir) else "does not exist"
        raise PipelineError(f"{flag}={saved_model_dir} {what}: give a version directory that "
                            "imagenet_main --export_dir wrote (EXPORT_DIR/1700000000)")
    if _is_saved_model(saved_model_dir):
        return
    versions = sorted((name for name in os.listdir(saved_model_dir)
                       if name.isdigit() and _is_saved_model(os.path.join(saved_model_dir, name))),
                      key=int)
    if versions:
        raise PipelineError(
            f"{flag}={saved_model_dir} is the parent of {len(versions)} "
            f"export{'s' if len(versions) > 1 else ''}, not one: give a version directory, e.g. the "
            f"newest: {flag}={os.path.join(saved_model_dir, versions[-1])}")
    raise PipelineError(f"{flag}={saved_model_dir} is not a SavedModel (no saved_model.pb): give a "
                        "version directory that imagenet_main --export_dir wrote")


def _read_info(saved_model_dir):
    path = os.path.join(saved_model_dir, "assets.extra", export.EXPORT_INFO)
    try:
        info = export.read_export_info(saved_model_dir)
    except ValueError as error:  # invalid JSON or not text
        raise PipelineError(f"{path} is not valid JSON ({error}): export the checkpoint again with "
                            "imagenet_main --export_only") from None
    if not isinstance(info, dict) or not all(isinstance(info.get(key), int) for key in _REQUIRED_INFO):
        raise PipelineError(f"{path} lacks integer {' and '.join(_REQUIRED_INFO)}: export the "
                            "checkpoint again with imagenet_main --export_only")
    return info


def open_export(saved_model_dir, flag="--saved_model_dir"):
    """The export's recorded conventions, its serving_default function and its class list."""
    check_version_dir(saved_model_dir, flag)
    info = _read_info(saved_model_dir)
    try:
        serve = tf.saved_model.load(saved_model_dir).signatures[export.SERVING_SIGNATURE]
    except (OSError, ValueError, KeyError, IndexError, tf.errors.OpError) as error:
        # IndexError: TensorFlow's reader of a truncated variables.data file (an interrupted copy).
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PipelineError(f"{flag}={saved_model_dir} cannot be loaded ({first_line}): export the "
                            "checkpoint again with imagenet_main --export_only") from None
    return OpenedExport(info, serve, export.read_class_names(saved_model_dir),
                        run_record.read_export_records(saved_model_dir))
