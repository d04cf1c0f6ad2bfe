"""Reading what official.xception.report writes, for the tests that check it: the rows of the
evaluation table of report.md, and the picture's size and content."""

import numpy as np
from PIL import Image

from official.xception import report


def evaluation_rows(text):
    """[{column header: cell}] of the first Markdown table in `text`."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:]]


def assert_picture(path):
    """The PNG decodes, has the documented size, and is not blank (many distinct colours)."""
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        width, height = report.PICTURE_INCHES
        assert picture.size == (width * report.PICTURE_DPI, height * report.PICTURE_DPI)
        pixels = np.asarray(picture.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"{path} looks blank: {len(colours)} colours"
    # Curves are drawn in colour, not only the black and grey of axes and text.
    assert (np.ptp(pixels.astype(int), axis=2) > 100).mean() > 0.001
