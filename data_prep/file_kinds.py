"""Telling images from the other files people keep in dataset folders (licences, notes, OS droppings).

A file is decided by its name first and its bytes only when the name cannot say: an image extension
means "image" (an unreadable one is then a bad file, reported as such), a clearly non-image name or
extension means "not an image" (skipped silently, counted in the summary), and anything else is an image
exactly when its first bytes carry an image format's signature. No TensorFlow here: listing uses it.
"""

import os

JPEG_MAGIC = b"\xff\xd8\xff"
# Includes formats image_coding cannot read (HEIC, camera raw, ...): those are reported as bad files, so
# that nobody's photos disappear without a word.
IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff",
                              ".webp", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".psd", ".tga",
                              ".ppm", ".pgm", ".pbm", ".raw", ".dng", ".cr2", ".nef", ".arw"})
NON_IMAGE_EXTENSIONS = frozenset({
    ".txt", ".md", ".rst", ".json", ".csv", ".tsv", ".xml", ".yaml", ".yml", ".ini", ".cfg", ".log",
    ".htm", ".html", ".pdf", ".doc", ".docx", ".rtf", ".py", ".ipynb", ".sh", ".db", ".sqlite",
    ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".npy", ".npz", ".pkl", ".h5", ".mat",
    ".mp3", ".wav", ".mp4", ".avi", ".mov", ".mkv", ".svg", ".ds_store", ".url", ".lnk"})
# Compared in lower case and without extension (LICENSE, LICENSE.txt and License.md are all licences).
NON_IMAGE_STEMS = frozenset({"thumbs", "desktop", "license", "licence", "readme", "copying", "notice",
                             "authors", "changelog", "makefile"})
HEADER_BYTES = 12
_SIGNATURES = (JPEG_MAGIC, b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image_data(header):
    """Whether `header` (a file's first HEADER_BYTES bytes) starts like a format image_coding reads."""
    return header.startswith(_SIGNATURES) or (header[:4] == b"RIFF" and header[8:12] == b"WEBP")


def non_image_kind(name, read_header):
    """None when the file named `name` is to be read as an image, else what it is ('.txt', 'LICENSE',
    'hidden file', ...) for the summary's count. `read_header()` returns the first HEADER_BYTES bytes, or
    None when the file cannot be read (it is then left to the image reader, which reports it), and is
    called only when the name cannot decide."""
    if name.startswith("."):
        # Editor and OS droppings (.DS_Store, macOS tar's ._photo.jpg resource forks), never images.
        return "hidden file"
    stem, extension = os.path.splitext(name)
    extension = extension.lower()
    if extension in IMAGE_EXTENSIONS:
        return None
    if extension in NON_IMAGE_EXTENSIONS:
        return extension
    if stem.lower() in NON_IMAGE_STEMS:
        return name
    header = read_header()
    if header is None or looks_like_image_data(header):
        return None
    return f"{extension or 'no extension'} (not image data)"
