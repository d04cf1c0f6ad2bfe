r"""Classifies image files with an exported SavedModel's `serving_default` signature.

    python -m official.xception.classify_image --saved_model_dir=EXPORT/1700000000 cat.jpg dog.png

Prints the top-5 classes (index, name, text, probability) of each image, exactly as a server running
the export would answer; --verbose first says which weights the export holds and what made them (its
provenance record).
"""

import sys

from absl import app
from absl import flags
import tensorflow as tf

from official.utils import logging_setup
from official.utils.errors import PipelineError
from official.xception import export
from official.xception import exported_model
from official.xception import run_record


def classify(saved_model_dir, image_paths):
    """[(path, [(index, name, text, probability)] top-5, or the one-line problem of that file)] for
    each image file: a bad file fails alone."""
    opened = exported_model.open_export(saved_model_dir)
    names, serve = opened.class_names, opened.serve
    results = []
    for path in image_paths:
        try:
            with open(path, "rb") as handle:
                image_bytes = handle.read()
        except OSError as error:
            results.append((path, f"cannot read image {path}: {error.strerror}"))
            continue
        try:
            outputs = serve(image_bytes=tf.constant([image_bytes]))
        except tf.errors.InvalidArgumentError:
            results.append((path, f"{path} is not a readable JPEG, PNG, GIF or BMP image"))
            continue
        top = zip(outputs["top_5_classes"].numpy()[0], outputs["top_5_probabilities"].numpy()[0])
        results.append((path, [(int(index), *names[index], float(probability))
                               for index, probability in top]))
    return results


def define_flags():
    flags.DEFINE_string("saved_model_dir", None, "An export of imagenet_main (a numbered version dir).")
    flags.DEFINE_boolean("verbose", False, "First print which weights the export holds and the "
                         "provenance of the run that made them (commit, versions, data, flags).")
    flags.mark_flag_as_required("saved_model_dir")


def main(argv):
    if len(argv) < 2:
        sys.exit("error: name at least one image file after the flags")
    logging_setup.log_through_absl_only()
    try:
        results = classify(flags.FLAGS.saved_model_dir, argv[1:])
        if flags.FLAGS.verbose:
            print("\n".join(run_record.export_summary(
                export.read_export_info(flags.FLAGS.saved_model_dir),
                run_record.read_export_records(flags.FLAGS.saved_model_dir))))
    except PipelineError as error:
        sys.exit(f"error: {error}")
    failed = 0
    for path, top in results:
        if isinstance(top, str):
            failed += 1
            print(f"error: {top}", file=sys.stderr, flush=True)
            continue
        print(path, flush=True)
        for index, name, text, probability in top:
            print(f"  {probability:7.2%}  {index:5d}  {name}  {text}", flush=True)
    if failed:
        sys.exit(f"error: {failed} of {len(results)} images could not be classified (above)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
