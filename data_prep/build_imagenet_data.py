"""Raw ImageNet, or your own images in class folders (or the original ILSVRC2012 tars) → sharded
TFRecords (schema: docs/DESIGN.md §3).

    python -m data_prep.build_imagenet_data --train_tar=ILSVRC2012_img_train.tar \
        --validation_tar=ILSVRC2012_img_val.tar --validation_labels_file=val_labels.txt \
        --imagenet_metadata_file=imagenet_metadata.txt --bounding_box_file=bounding_boxes.csv \
        --output_directory=/data/imagenet-tfrecords

Your own dataset: one folder per class, named as you like; files that are not images are left out.

    python -m data_prep.build_imagenet_data --train_directory=flowers/ --validation_fraction=0.1 \
        --train_shards=16 --validation_shards=4 --output_directory=/data/flowers-tfrecords

Re-running the same command after an interruption keeps the finished shards and builds the rest.
"""

import os
import sys

from absl import app
from absl import flags

from data_prep import builder
from official.utils import flags_core
from official.utils.errors import PipelineError

_DEFAULTS = builder.BuildConfig(output_directory="")

flags.DEFINE_string("train_directory", None, "Training images, one sub-folder per class (any folder name: "
                    "it becomes image/class/synset).")
flags.DEFINE_string("train_tar", None, "ILSVRC2012_img_train.tar (a tar of per-synset tars), read in place.")
flags.DEFINE_string("validation_directory", None, "Validation images: flat (with --validation_labels_file) "
                    "or one sub-folder per class.")
flags.DEFINE_string("validation_tar", None, "ILSVRC2012_img_val.tar (flat), read in place.")
flags.DEFINE_float("validation_fraction", None, "Without a validation set: hold out this fraction of every "
                   "class's training images (seeded by --seed, at least one per class) as validation-* shards; "
                   "the list goes to validation_holdout.tsv.")
flags.DEFINE_string("validation_labels_file", None,
                    "One synset per line for the flat validation images in sorted file-name order.")
flags.DEFINE_string("labels_file", None, "Class list, one class (folder) name per line; labels follow its "
                    "order. Default: the sorted training class folder names.")
flags.DEFINE_string("imagenet_metadata_file", None, "'class name<TAB>human text' lines for image/class/text "
                    "(the class name without it).")
flags.DEFINE_string("bounding_box_file", None, "CSV from data_prep.process_bounding_boxes.")
flags.DEFINE_string("output_directory", None, "Where the shards and build_summary.json go.")
flags.DEFINE_integer("train_shards", _DEFAULTS.train_shards, "Number of training shards.")
flags.DEFINE_integer("validation_shards", _DEFAULTS.validation_shards, "Number of validation shards.")
flags.DEFINE_integer("num_workers", None, "Worker processes (default: all cores available to this process).")
flags.DEFINE_integer("first_label", _DEFAULTS.first_label, "1: labels 1..N with 0 reserved for background "
                     "(the established convention, 1001-way); 0: labels 0..N-1 (1000-way, Keras order).")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the file-order shuffle and of --validation_fraction.")
flags.DEFINE_integer("max_bad_files", _DEFAULTS.max_bad_files,
                     "Fail when more unusable images than this are found (each is listed in the summary).")
flags.DEFINE_integer("max_pixels", _DEFAULTS.max_pixels,
                     "Images whose header claims more pixels are skipped (decompression bombs).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_directory:
        raise app.UsageError("--output_directory is required")
    problem = flags_core.check_numeric_flags(FLAGS)
    if problem:
        sys.exit(f"error: {problem}")
    config = builder.BuildConfig(
        output_directory=FLAGS.output_directory,
        train_directory=FLAGS.train_directory,
        train_tar=FLAGS.train_tar,
        validation_directory=FLAGS.validation_directory,
        validation_tar=FLAGS.validation_tar,
        validation_labels_file=FLAGS.validation_labels_file,
        labels_file=FLAGS.labels_file,
        imagenet_metadata_file=FLAGS.imagenet_metadata_file,
        bounding_box_file=FLAGS.bounding_box_file,
        validation_fraction=FLAGS.validation_fraction,
        train_shards=FLAGS.train_shards,
        validation_shards=FLAGS.validation_shards,
        num_workers=FLAGS.num_workers or len(os.sched_getaffinity(0)),
        first_label=FLAGS.first_label,
        seed=FLAGS.seed,
        max_bad_files=FLAGS.max_bad_files,
        max_pixels=FLAGS.max_pixels,
    )
    try:
        builder.build(config)
    except PipelineError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"error: interrupted; the finished shards in {FLAGS.output_directory} are kept: run the same "
                 f"command again to resume")


if __name__ == "__main__":
    app.run(main)
