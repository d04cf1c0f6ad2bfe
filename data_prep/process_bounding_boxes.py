"""Converts ImageNet's per-image bounding-box XML files into the CSV that build_imagenet_data reads.

    python -m data_prep.process_bounding_boxes --bounding_box_tar=ILSVRC2012_bbox_train_v2.tar.gz \
        --output_file=imagenet_2012_bounding_boxes.csv

Coordinates become relative to the image size, are clamped to [0, 1], inverted min/max are swapped and
boxes without area are dropped; a count summary goes to stderr.
"""

import os
import sys
import time

from absl import app
from absl import flags

from data_prep import bounding_boxes
from data_prep.errors import DataPrepError
from data_prep.progress import format_duration

flags.DEFINE_string("bounding_box_dir", None, "Folder with the XML annotations (searched recursively).")
flags.DEFINE_string("bounding_box_tar", None,
                    "The original annotation archive (e.g. ILSVRC2012_bbox_train_v2.tar.gz), read as a stream.")
flags.DEFINE_string("output_file", None, "CSV to write (file,xmin,ymin,xmax,ymax per box, no header).")
FLAGS = flags.FLAGS

# The archive's member count is unknown while streaming, so progress reports counts and rate only.
_PROGRESS_EVERY_FILES = 50000


def process(output_file, directory=None, tar_path=None, log=sys.stderr):
    """Writes the CSV atomically (temporary name, then rename) and returns the BoxStats."""
    annotation_files = bounding_boxes.iter_annotation_files(directory=directory, tar_path=tar_path)
    output_dir = os.path.dirname(os.path.abspath(output_file))
    if not os.path.isdir(output_dir):
        raise DataPrepError(f"--output_file {output_file}: folder {output_dir} does not exist")
    temporary = output_file + ".incomplete"
    start = time.monotonic()
    files_read = 0

    def on_file(path, reason):
        nonlocal files_read
        if reason:
            log.write(f"warning: skipped {path}: {reason}\n")
        files_read += 1
        if files_read % _PROGRESS_EVERY_FILES == 0:
            elapsed = time.monotonic() - start
            log.write(f"bounding boxes: {files_read:,} XML files read, {files_read / elapsed:,.0f} files/s, "
                      f"{format_duration(elapsed)} elapsed\n")

    try:
        with open(temporary, "w", encoding="utf-8", newline="") as csv_stream:
            stats = bounding_boxes.convert_annotations(annotation_files, csv_stream, on_file=on_file)
        os.replace(temporary, output_file)
    except OSError as error:
        raise DataPrepError(f"cannot write --output_file {output_file}: {error.strerror or error}") from None
    if stats.xml_files == 0:
        os.remove(output_file)
        raise DataPrepError(f"no .xml files found in {directory or tar_path}; is this the bounding-box "
                            f"annotation folder or archive?")
    return stats


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_file:
        raise app.UsageError("--output_file is required")
    try:
        stats = process(FLAGS.output_file, directory=FLAGS.bounding_box_dir, tar_path=FLAGS.bounding_box_tar)
    except DataPrepError as error:
        sys.exit(f"error: {error}")
    sys.stderr.write(f"wrote {FLAGS.output_file}: {stats.summary_line()}\n")


if __name__ == "__main__":
    app.run(main)
