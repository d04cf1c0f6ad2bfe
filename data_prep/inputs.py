"""Finding the raw images: class folders, flat folders, and the original ILSVRC2012 tars (read in place).

Everything here only lists files and reads small text files; image bytes are read by the workers
(`read_image_bytes`). Tars are indexed once (member headers only) and their members are then read by
offset, so the 140 GB archives are never extracted and shard workers read them as fast as folders.
"""

import dataclasses
import os
import tarfile

from data_prep.errors import DataPrepError


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One raw image: a file, or a member of an uncompressed tar at a byte offset."""
    path: str        # the file, or the tar holding the member
    member: str      # "" for files; "n01440764.tar/n01440764_10026.JPEG" for (nested) tar members
    offset: int      # where the member's bytes start in the tar (0 for files)
    size: int
    mtime: int       # seconds; part of the identity used to decide whether a finished shard is still valid

    @property
    def display_path(self):
        return f"{self.path}:{self.member}" if self.member else self.path

    @property
    def file_name(self):
        return os.path.basename(self.member or self.path)

    def identity(self):
        return f"{self.display_path}\0{self.offset}\0{self.size}\0{self.mtime}"


def read_image_bytes(source, open_tars):
    """The bytes of `source`; raises OSError. `open_tars` caches tar file descriptors by path."""
    if not source.member:
        with open(source.path, "rb") as image_file:
            return image_file.read()
    descriptor = open_tars.get(source.path)
    if descriptor is None:
        descriptor = open_tars[source.path] = os.open(source.path, os.O_RDONLY)
    data = os.pread(descriptor, source.size, source.offset)
    if len(data) != source.size:
        raise OSError(f"tar member is truncated ({len(data)} of {source.size} bytes)")
    return data


def _is_listed(name):
    # Dot files are editor/OS droppings (.DS_Store, ._foo from macOS tar), never ImageNet images.
    return not name.startswith(".")


def _scandir_sorted(directory, flag):
    try:
        with os.scandir(directory) as entries:
            return sorted((entry for entry in entries if _is_listed(entry.name)), key=lambda e: e.name)
    except FileNotFoundError:
        raise DataPrepError(f"{flag} {directory} does not exist") from None
    except NotADirectoryError:
        raise DataPrepError(f"{flag} {directory} is not a directory") from None
    except OSError as error:
        raise DataPrepError(f"cannot read {flag} {directory}: {error.strerror or error}") from None


def _file_source(entry):
    stat = entry.stat()
    return ImageSource(entry.path, "", 0, stat.st_size, int(stat.st_mtime))


def _files_under(directory, flag):
    """Every listed file below `directory` (any depth), sorted by path relative to it (as tar members are)."""
    sources = []
    for entry in _scandir_sorted(directory, flag):
        if entry.is_dir():
            sources.extend(_files_under(entry.path, flag))
        elif entry.is_file():
            sources.append(_file_source(entry))
    return sorted(sources, key=lambda source: os.path.relpath(source.path, directory))


def list_class_folders(directory, flag):
    """{synset: [ImageSource]} for a folder with one sub-folder per synset (files may be nested deeper).

    Files at the top level are ignored (e.g. the per-synset tars left next to extracted folders).
    """
    classes = {}
    for entry in _scandir_sorted(directory, flag):
        if entry.is_dir():
            sources = _files_under(entry.path, flag)
            if not sources:
                raise DataPrepError(f"class folder {entry.path} under {flag} is empty; restore its images "
                                    f"or remove the folder")
            classes[entry.name] = sources
    if not classes:
        raise DataPrepError(f"{flag} {directory} has no class sub-folders (expected one folder per synset)")
    return classes


def list_validation_directory(directory, flag):
    """Returns ("flat", [ImageSource]) or ("classes", {synset: [ImageSource]})."""
    entries = _scandir_sorted(directory, flag)
    has_dirs = any(entry.is_dir() for entry in entries)
    has_files = any(entry.is_file() for entry in entries)
    if has_dirs and has_files:
        raise DataPrepError(f"{flag} {directory} holds both image files and sub-folders; expected either "
                            f"flat images (with --validation_labels_file) or one folder per synset")
    if has_dirs:
        return "classes", list_class_folders(directory, flag)
    if not has_files:
        raise DataPrepError(f"{flag} {directory} is empty")
    return "flat", [_file_source(entry) for entry in entries if entry.is_file()]


class _TarMemberWindow:
    """A seekable view of one member of the outer tar, so tarfile can index a nested tar in place."""

    def __init__(self, raw_file, start, size):
        self._raw = raw_file
        self._start = start
        self._size = size
        self._position = 0

    def read(self, count=-1):
        remaining = self._size - self._position
        count = remaining if count is None or count < 0 else min(count, remaining)
        data = os.pread(self._raw.fileno(), count, self._start + self._position)
        self._position += len(data)
        return data

    def seek(self, position, whence=os.SEEK_SET):
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = base + position
        return self._position

    def tell(self):
        return self._position


def _open_tar(raw_file, flag, tar_path, start=0, size=None):
    window = _TarMemberWindow(raw_file, start, os.fstat(raw_file.fileno()).st_size if size is None else size)
    try:
        return tarfile.open(fileobj=window, mode="r:")
    except tarfile.TarError as error:
        raise DataPrepError(f"{flag} {tar_path} is not an uncompressed tar archive ({error}); the ILSVRC2012 "
                            f"image tars are plain .tar files") from None


def _tar_files(archive, flag, tar_path, base_offset=0, prefix=""):
    """(name, ImageSource) for the regular files of an open tar, in archive order."""
    try:
        for member in archive:
            if member.isfile() and _is_listed(os.path.basename(member.name)):
                yield member.name, ImageSource(tar_path, prefix + member.name, base_offset + member.offset_data,
                                               member.size, int(member.mtime))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataPrepError(f"{flag} {tar_path} is truncated or corrupt ({error}); download it again") from None


def _open_raw(tar_path, flag):
    try:
        raw_file = open(tar_path, "rb", buffering=0)
    except FileNotFoundError:
        raise DataPrepError(f"{flag} {tar_path} does not exist") from None
    except OSError as error:
        raise DataPrepError(f"cannot read {flag} {tar_path}: {error.strerror or error}") from None
    if not os.path.isfile(tar_path):
        raw_file.close()
        raise DataPrepError(f"{flag} {tar_path} is not a regular file (it is read by offset, so a pipe "
                            f"will not do)")
    return raw_file


def list_train_tar(tar_path, flag="--train_tar"):
    """{synset: [ImageSource]} from ILSVRC2012_img_train.tar: a tar of `<synset>.tar` tars."""
    classes = {}
    with _open_raw(tar_path, flag) as raw_file:
        outer = _open_tar(raw_file, flag, tar_path)
        for name, inner_source in list(_tar_files(outer, flag, tar_path)):
            synset, extension = os.path.splitext(os.path.basename(name))
            if extension != ".tar":
                continue
            inner = _open_tar(raw_file, flag, f"{tar_path}:{name}", inner_source.offset, inner_source.size)
            sources = [source for _, source in
                       _tar_files(inner, flag, tar_path, inner_source.offset, prefix=name + "/")]
            if not sources:
                raise DataPrepError(f"{tar_path}:{name} under {flag} holds no images; download the archive "
                                    f"again")
            classes[synset] = sorted(sources, key=lambda source: source.member)
    if not classes:
        raise DataPrepError(f"{flag} {tar_path} holds no <synset>.tar archives; is it ILSVRC2012_img_train.tar?")
    return dict(sorted(classes.items()))


def list_flat_tar(tar_path, flag="--validation_tar"):
    """[ImageSource] of a flat tar (ILSVRC2012_img_val.tar), sorted by file name."""
    with _open_raw(tar_path, flag) as raw_file:
        sources = [source for _, source in _tar_files(_open_tar(raw_file, flag, tar_path), flag, tar_path)]
    if not sources:
        raise DataPrepError(f"{flag} {tar_path} holds no files")
    return sorted(sources, key=lambda source: source.file_name)


def read_lines(path, flag):
    """Non-blank, stripped lines of a small text file, with (line number, text)."""
    try:
        with open(path, encoding="utf-8") as text_file:
            return [(number, line.strip()) for number, line in enumerate(text_file, start=1) if line.strip()]
    except FileNotFoundError:
        raise DataPrepError(f"{flag} {path} does not exist") from None
    except UnicodeDecodeError:
        raise DataPrepError(f"{flag} {path} is not UTF-8 text") from None
    except OSError as error:
        raise DataPrepError(f"cannot read {flag} {path}: {error.strerror or error}") from None


def read_synsets(path, flag):
    """The synset list of a labels file (one per line), checking for duplicates."""
    synsets = []
    seen = {}
    for number, text in read_lines(path, flag):
        if text in seen:
            raise DataPrepError(f"{flag} {path} line {number}: synset {text} already on line {seen[text]}")
        if any(character.isspace() for character in text):
            raise DataPrepError(f"{flag} {path} line {number}: expected one synset per line, got {text!r}")
        seen[text] = number
        synsets.append(text)
    if not synsets:
        raise DataPrepError(f"{flag} {path} is empty")
    return synsets


def read_metadata(path, flag="--imagenet_metadata_file"):
    """{synset: human-readable text} from `synset<TAB>text` lines."""
    texts = {}
    for number, text in read_lines(path, flag):
        synset, tab, human = text.partition("\t")
        if not tab:
            raise DataPrepError(f"{flag} {path} line {number}: expected 'synset<TAB>text', got {text!r}")
        texts[synset.strip()] = human.strip()
    return texts
