"""ImageNet bounding boxes: per-image Pascal-VOC XML annotations → one CSV, and reading that CSV back.

The CSV is the established format (no header): `file,xmin,ymin,xmax,ymax` with coordinates relative to
the image size, one line per box, e.g. `n01440764_10026.JPEG,0.0060,0.0100,0.9980,0.9960`.
"""

import collections
import csv
import dataclasses
import math
import os
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree

from official.utils.errors import PipelineError
from official.utils.progress import format_duration


@dataclasses.dataclass
class BoxStats:
    xml_files: int = 0
    images_with_boxes: int = 0
    boxes_written: int = 0
    boxes_clamped: int = 0
    boxes_swapped: int = 0
    boxes_dropped_degenerate: int = 0
    skipped_files: list = dataclasses.field(default_factory=list)  # (path, reason)

    def summary_line(self):
        return (f"{self.xml_files:,} XML files, {self.images_with_boxes:,} images with boxes, "
                f"{self.boxes_written:,} boxes written ({self.boxes_clamped:,} clamped to [0,1], "
                f"{self.boxes_swapped:,} with min/max swapped), {self.boxes_dropped_degenerate:,} "
                f"degenerate boxes dropped, {len(self.skipped_files):,} unreadable XML files skipped")


def image_file_name(xml_path):
    """The image an annotation belongs to, from the XML file's name: the `<filename>` element of some
    ImageNet annotations is a literal '%s', so it cannot be trusted."""
    return os.path.splitext(os.path.basename(xml_path))[0] + ".JPEG"


def _number(element, tag):
    node = element.find(tag)
    if node is None or node.text is None:
        raise ValueError(f"missing <{tag}>")
    try:
        value = float(node.text)
    except ValueError:
        raise ValueError(f"<{tag}> is not a number: {node.text.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"<{tag}> is not a finite number: {node.text.strip()!r}")
    return value


def parse_annotation(xml_bytes):
    """Returns (width, height, [(xmin, ymin, xmax, ymax) in pixels]); raises ValueError with a reason."""
    try:
        root = ElementTree.fromstring(xml_bytes)
    except ElementTree.ParseError as error:
        raise ValueError(f"not well-formed XML ({error})") from None
    size = root.find("size")
    if size is None:
        raise ValueError("missing <size>")
    width, height = _number(size, "width"), _number(size, "height")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width:g}x{height:g} is not positive")
    boxes = []
    for bndbox in root.iter("bndbox"):
        boxes.append(tuple(_number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax")))
    return width, height, boxes


def normalize_box(box, width, height, stats):
    """Pixel box → relative box clamped to [0, 1] with min <= max, or None if it has no area."""
    xmin, ymin, xmax, ymax = box[0] / width, box[1] / height, box[2] / width, box[3] / height
    clamped = [min(max(value, 0.0), 1.0) for value in (xmin, ymin, xmax, ymax)]
    if clamped != [xmin, ymin, xmax, ymax]:
        stats.boxes_clamped += 1
    xmin, ymin, xmax, ymax = clamped
    if xmin > xmax or ymin > ymax:
        stats.boxes_swapped += 1
        xmin, xmax = min(xmin, xmax), max(xmin, xmax)
        ymin, ymax = min(ymin, ymax), max(ymin, ymax)
    if xmin >= xmax or ymin >= ymax:
        stats.boxes_dropped_degenerate += 1
        return None
    return xmin, ymin, xmax, ymax


def _iter_xml_in_directory(directory):
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".xml") and not name.startswith("."):
                path = os.path.join(root, name)
                try:
                    with open(path, "rb") as xml_file:
                        yield path, xml_file.read()
                except OSError as error:
                    yield path, error


def _iter_xml_in_tar(tar_path):
    """Streams the archive (the original is a .tar.gz, so it cannot be indexed)."""
    try:
        archive = tarfile.open(tar_path, "r|*")
    except (OSError, tarfile.TarError) as error:
        raise PipelineError(f"cannot read --bounding_box_tar {tar_path}: {error}") from None
    with archive:
        try:
            for member in archive:
                name = os.path.basename(member.name)
                if member.isfile() and name.endswith(".xml") and not name.startswith("."):
                    yield f"{tar_path}:{member.name}", archive.extractfile(member).read()
        except (OSError, tarfile.TarError, EOFError) as error:
            raise PipelineError(f"--bounding_box_tar {tar_path} is truncated or corrupt ({error}); "
                                f"download it again") from None


def iter_annotation_files(directory=None, tar_path=None):
    """(path, bytes or OSError) for each XML file, in a deterministic order."""
    if (directory is None) == (tar_path is None):
        raise PipelineError("give exactly one of --bounding_box_dir and --bounding_box_tar")
    if directory is not None:
        if not os.path.isdir(directory):
            raise PipelineError(f"--bounding_box_dir {directory} is not a directory")
        return _iter_xml_in_directory(directory)
    if not os.path.isfile(tar_path):
        raise PipelineError(f"--bounding_box_tar {tar_path} does not exist or is not a file")
    return _iter_xml_in_tar(tar_path)


def convert_annotations(annotation_files, csv_stream, on_file=None):
    """Writes the CSV lines for (path, bytes) annotations to `csv_stream`; returns BoxStats.

    `on_file(path, reason_or_None)` is called per file (progress, warnings).
    """
    stats = BoxStats()
    writer = csv.writer(csv_stream, lineterminator="\n")
    for path, content in annotation_files:
        stats.xml_files += 1
        try:
            if isinstance(content, OSError):
                raise ValueError(f"unreadable ({content.strerror or content})")
            width, height, boxes = parse_annotation(content)
        except ValueError as error:
            stats.skipped_files.append((path, str(error)))
            if on_file:
                on_file(path, str(error))
            continue
        kept = [box for box in (normalize_box(b, width, height, stats) for b in boxes) if box]
        if kept:
            stats.images_with_boxes += 1
            stats.boxes_written += len(kept)
            file_name = image_file_name(path)
            for box in kept:
                writer.writerow([file_name] + [f"{value:.4f}" for value in box])
        if on_file:
            on_file(path, None)
    return stats


def read_box_csv(path):
    """{image file name: [(xmin, ymin, xmax, ymax), ...]} from a CSV written by convert_annotations."""
    boxes = collections.defaultdict(list)
    try:
        with open(path, newline="", encoding="utf-8") as csv_file:
            for line_number, row in enumerate(csv.reader(csv_file), start=1):
                if not row:
                    continue
                try:
                    if len(row) != 5:
                        raise ValueError(f"{len(row)} fields instead of 5")
                    box = tuple(float(value) for value in row[1:])
                    if not all(0.0 <= value <= 1.0 for value in box) or box[0] >= box[2] or box[1] >= box[3]:
                        raise ValueError("coordinates must satisfy 0 <= min < max <= 1")
                except ValueError as error:
                    raise PipelineError(
                        f"--bounding_box_file {path} line {line_number}: {error}; expected "
                        f"'file,xmin,ymin,xmax,ymax' as written by data_prep.process_bounding_boxes") from None
                boxes[row[0]].append(box)
    except OSError as error:
        raise PipelineError(f"cannot read --bounding_box_file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise PipelineError(f"--bounding_box_file {path} is not UTF-8 text; expected the CSV written by "
                            f"data_prep.process_bounding_boxes") from None
    return dict(boxes)


# The archive's member count is unknown while streaming, so progress reports counts and rate only.
_PROGRESS_EVERY_FILES = 50000


def _kept(output_file):
    return f" ({output_file} was left as it was)" if os.path.exists(output_file) else ""


def write_csv(output_file, directory=None, tar_path=None, log=None):
    """Writes the CSV atomically (temporary name, then rename) and returns the BoxStats."""
    log = log or sys.stderr
    annotation_files = iter_annotation_files(directory=directory, tar_path=tar_path)
    output_dir = os.path.dirname(os.path.abspath(output_file))
    if not os.path.isdir(output_dir):
        raise PipelineError(f"--output_file {output_file}: folder {output_dir} does not exist")
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
        try:
            with open(temporary, "w", encoding="utf-8", newline="") as csv_stream:
                stats = convert_annotations(annotation_files, csv_stream, on_file=on_file)
                csv_stream.flush()
                os.fsync(csv_stream.fileno())
        except OSError as error:
            raise PipelineError(f"cannot write --output_file {output_file}: {error.strerror or error}") from None
        # An existing CSV is replaced only by a useful one: a wrong folder or a broken archive keeps it.
        source = directory or tar_path
        if stats.xml_files == 0:
            raise PipelineError(f"no .xml files found in {source}; is this the bounding-box annotation folder "
                                f"or archive?{_kept(output_file)}")
        if len(stats.skipped_files) == stats.xml_files:
            raise PipelineError(f"none of the {stats.xml_files:,} XML files in {source} is a readable annotation "
                                f"(first: {stats.skipped_files[0][0]}: {stats.skipped_files[0][1]}); is this "
                                f"the bounding-box annotation folder or archive?{_kept(output_file)}")
        try:
            os.replace(temporary, output_file)
        except OSError as error:
            raise PipelineError(f"cannot write --output_file {output_file}: {error.strerror or error}") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return stats
