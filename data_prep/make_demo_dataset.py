"""Writes a small learnable raw dataset in the original ImageNet layout (see data_prep/demo_dataset.py):

    DIR/train/<synset>/<synset>_<i>.JPEG    DIR/val/ILSVRC2012_val_%08d.JPEG    DIR/val_labels.txt
    DIR/synsets.txt    DIR/metadata.txt    DIR/bboxes/<synset>/<synset>_<i>.xml    DIR/demo_dataset.json

    python -m data_prep.make_demo_dataset --output_dir=/tmp/demo_raw
"""

import sys
import time

from absl import app
from absl import flags

from data_prep import demo_dataset
from official.utils import flags_core
from official.utils.errors import PipelineError

flags.DEFINE_string("output_dir", None, "Where to write the dataset: a new or empty folder (one holding this "
                    "very dataset is left as it is).")
flags.DEFINE_integer("num_classes", 5, "Number of classes (each a distinct shape/colour/texture).")
flags.DEFINE_integer("train_per_class", 60, "Training images per class.")
flags.DEFINE_integer("val_per_class", 20, "Validation images per class.")
flags.DEFINE_integer("image_size", 96, "Side of the square images in pixels.")
flags.DEFINE_integer("seed", 0, "Random seed; the same flags give the same bytes.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    problem = flags_core.check_numeric_flags(FLAGS)
    if problem:
        sys.exit(f"error: {problem}")
    start = time.monotonic()
    try:
        classes = demo_dataset.make_demo_dataset(FLAGS.output_dir, FLAGS.num_classes, FLAGS.train_per_class,
                                                 FLAGS.val_per_class, FLAGS.image_size, FLAGS.seed)
    except PipelineError as error:
        sys.exit(f"error: {error}")
    sys.stderr.write(f"{FLAGS.output_dir}: {len(classes)} classes × ({FLAGS.train_per_class} train + "
                     f"{FLAGS.val_per_class} val) images of {FLAGS.image_size}², ready in "
                     f"{time.monotonic() - start:.1f}s\n")


if __name__ == "__main__":
    app.run(main)
