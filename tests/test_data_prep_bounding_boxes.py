"""data_prep.process_bounding_boxes: XML annotations → the relative, clamped CSV (hand-computed oracle)."""

import io
import os
import subprocess
import sys
import tarfile

import pytest

from data_prep import bounding_boxes
from official.utils.errors import PipelineError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def annotation(width, height, *boxes, filename="%s"):
    objects = "".join(f"<object><name>n01</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                      f"<ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"</size>{objects}</annotation>").encode()


ANNOTATIONS = {
    # 200x100 image: (20, 10, 180, 90) → (0.1, 0.1, 0.9, 0.9); inverted x → swapped; beyond the image → clamped.
    "n01/n01_1.xml": annotation(200, 100, (20, 10, 180, 90), (180, 10, 20, 50), (-10, 50, 250, 150)),
    # Degenerate boxes (no width, or no height after clamping) are dropped; the image keeps its good box.
    "n01/n01_2.xml": annotation(50, 50, (10, 10, 10, 40), (300, 10, 400, 40), (0, 0, 25, 50)),
    "n02/n02_7.xml": annotation(10, 10),                                     # no boxes: no line
    "n02/broken.xml": b"<annotation><size><width>5</width>",                  # not well-formed
    "n02/nosize.xml": b"<annotation><object/></annotation>",
}
EXPECTED_CSV = ("n01_1.JPEG,0.1000,0.1000,0.9000,0.9000\n"
                "n01_1.JPEG,0.1000,0.1000,0.9000,0.5000\n"
                "n01_1.JPEG,0.0000,0.5000,1.0000,1.0000\n"
                "n01_2.JPEG,0.0000,0.0000,0.5000,1.0000\n")


def write_tree(root):
    for name, content in ANNOTATIONS.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as xml_file:
            xml_file.write(content)


def check_stats(stats):
    assert (stats.xml_files, stats.images_with_boxes, stats.boxes_written) == (5, 2, 4)
    assert (stats.boxes_swapped, stats.boxes_clamped, stats.boxes_dropped_degenerate) == (1, 2, 2)
    assert sorted(reason.split(" (")[0] for _, reason in stats.skipped_files) == ["missing <size>",
                                                                                "not well-formed XML"]


def test_folder_of_annotations_gives_the_hand_computed_csv(tmp_path):
    write_tree(str(tmp_path / "xml"))
    log = io.StringIO()
    stats = bounding_boxes.write_csv(str(tmp_path / "boxes.csv"), directory=str(tmp_path / "xml"), log=log)
    assert (tmp_path / "boxes.csv").read_text() == EXPECTED_CSV
    check_stats(stats)
    assert log.getvalue().count("warning: skipped") == 2
    boxes = bounding_boxes.read_box_csv(str(tmp_path / "boxes.csv"))
    assert boxes == {"n01_1.JPEG": [(0.1, 0.1, 0.9, 0.9), (0.1, 0.1, 0.9, 0.5), (0.0, 0.5, 1.0, 1.0)],
                     "n01_2.JPEG": [(0.0, 0.0, 0.5, 1.0)]}


def test_original_tar_gz_gives_the_same_csv_from_the_command_line(tmp_path):
    archive_path = str(tmp_path / "bbox.tar.gz")
    with tarfile.open(archive_path, "w:gz") as archive:
        for name, content in sorted(ANNOTATIONS.items()):
            info = tarfile.TarInfo("Annotation/" + name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    result = subprocess.run([sys.executable, "-m", "data_prep.process_bounding_boxes",
                             f"--bounding_box_tar={archive_path}", f"--output_file={tmp_path / 'boxes.csv'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "boxes.csv").read_text() == EXPECTED_CSV
    assert "5 XML files, 2 images with boxes, 4 boxes written" in result.stderr.splitlines()[-1]


def test_errors_are_one_line(tmp_path):
    with pytest.raises(PipelineError, match="--bounding_box_dir .* is not a directory"):
        bounding_boxes.write_csv(str(tmp_path / "out.csv"), directory=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no .xml files found"):
        bounding_boxes.write_csv(str(tmp_path / "out.csv"), directory=str(tmp_path / "empty"))
    assert not os.path.exists(tmp_path / "out.csv")
    (tmp_path / "bad.csv").write_text("a.JPEG,0.1,0.2,0.05,0.9\n")
    with pytest.raises(PipelineError, match="bad.csv line 1: coordinates must satisfy"):
        bounding_boxes.read_box_csv(str(tmp_path / "bad.csv"))
    (tmp_path / "not.tar.gz").write_bytes(b"plain text, not an archive")
    with pytest.raises(PipelineError, match="cannot read --bounding_box_tar"):
        bounding_boxes.write_csv(str(tmp_path / "out.csv"), tar_path=str(tmp_path / "not.tar.gz"))
    assert not os.path.exists(tmp_path / "out.csv.incomplete")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
