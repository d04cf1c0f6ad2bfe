"""Converts ImageNet's per-image bounding-box XML files into the CSV that build_imagenet_data reads.

    python -m data_prep.process_bounding_boxes --bounding_box_tar=ILSVRC2012_bbox_train_v2.tar.gz \
        --output_file=imagenet_2012_bounding_boxes.csv

Coordinates become relative to the image size, are clamped to [0, 1], inverted min/max are swapped and
boxes without area are dropped; a count summary goes to stderr.
"""

import sys

from absl import app
from absl import flags

from data_prep import bounding_boxes
from official.utils.errors import PipelineError

flags.DEFINE_string("bounding_box_dir", None, "Folder with the XML annotations (searched recursively).")
flags.DEFINE_string("bounding_box_tar", None,
                    "The original annotation archive (e.g. ILSVRC2012_bbox_train_v2.tar.gz), read as a stream.")
flags.DEFINE_string("output_file", None, "CSV to write (file,xmin,ymin,xmax,ymax per box, no header).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_file:
        raise app.UsageError("--output_file is required")
    try:
        stats = bounding_boxes.write_csv(FLAGS.output_file, directory=FLAGS.bounding_box_dir,
                                         tar_path=FLAGS.bounding_box_tar)
    except PipelineError as error:
        sys.exit(f"error: {error}")
    sys.stderr.write(f"wrote {FLAGS.output_file}: {stats.summary_line()}\n")


if __name__ == "__main__":
    app.run(main)
