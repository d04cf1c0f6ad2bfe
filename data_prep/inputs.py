"""Finding the raw images: class folders, flat folders, and the original ILSVRC2012 tars (read in place).

Everything here only lists files and reads small text files (and the first bytes of files whose name
cannot tell whether they are images, see file_kinds); image bytes are read by the workers
(`read_image_bytes`). Tars are indexed once (member headers only) and their members are then read by
offset, so the 140 GB archives are never extracted and shard workers read them as fast as folders.
"""

import dataclasses
import os
import posixpath
import tarfile

from data_prep import file_kinds
from official.utils.errors import PipelineError


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One raw image: a file, or a member of an uncompressed tar at a byte offset."""
    path: str        # the file, or the tar holding the member
    member: str      # "" for files; "n01440764.tar/n01440764_10026.JPEG" for (nested) tar members
    offset: int      # where the member's bytes start in the tar (0 for files)
    size: int
    mtime: int       # seconds; part of the identity used to decide whether a finished shard is still valid
    # Where the image sits inside its class folder (or flat folder), the same for folders and tars: the
    # held-out validation split is chosen by it, so both inputs give the same split.
    relative_path: str

    @property
    def display_path(self):
        return f"{self.path}:{self.member}" if self.member else self.path

    @property
    def file_name(self):
        return os.path.basename(self.member or self.path)

    def identity(self):
        return f"{self.display_path}\0{self.offset}\0{self.size}\0{self.mtime}"


@dataclasses.dataclass(frozen=True)
class NonImageFile:
    """A file in the input that is not an image (see file_kinds), skipped without a warning."""
    class_name: str  # "" in flat folders
    path: str
    kind: str        # ".txt", "hidden file", "LICENSE", ...


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


def _read_header(source):
    """The first bytes of `source`, or None when it cannot be read (the worker then reports it)."""
    try:
        with open(source.path, "rb") as raw_file:
            return os.pread(raw_file.fileno(), min(file_kinds.HEADER_BYTES, source.size), source.offset)
    except OSError:
        return None


def _images_only(sources, class_name, non_images):
    """The sources that are images; the others are appended to `non_images` as NonImageFile."""
    images = []
    for source in sources:
        kind = file_kinds.non_image_kind(source.file_name, lambda: _read_header(source))
        if kind is None:
            images.append(source)
        else:
            non_images.append(NonImageFile(class_name, source.display_path, kind))
    return images


def _check_class_name(name, where, flag):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # Class names go into every record and the summary as UTF-8 text.
        raise PipelineError(f"class folder {where} under {flag} has a name that is not valid UTF-8 "
                            f"({os.fsencode(name)!r}); rename it") from None


def _scandir_sorted(directory, flag):
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except FileNotFoundError:
        raise PipelineError(f"{flag} {directory} does not exist") from None
    except NotADirectoryError:
        raise PipelineError(f"{flag} {directory} is not a directory") from None
    except OSError as error:
        raise PipelineError(f"cannot read {flag} {directory}: {error.strerror or error}") from None


def _is_folder(entry):
    # Hidden folders (.git, .ipynb_checkpoints, ...) are tool droppings, neither classes nor image folders.
    return entry.is_dir() and not entry.name.startswith(".")


def _is_file(entry):
    # A dangling symbolic link is listed too: the worker then reports the image as unreadable, by name,
    # instead of it vanishing without a word.
    return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))


def _file_source(entry, root):
    try:
        stat = entry.stat()
        size, mtime = stat.st_size, int(stat.st_mtime)
    except OSError:
        size = mtime = 0  # dangling link: reading it fails in the worker, which reports it
    return ImageSource(entry.path, "", 0, size, mtime, os.path.relpath(entry.path, root))


def _folder_key(path, flag):
    try:
        stat = os.stat(path)
    except OSError as error:
        raise PipelineError(f"cannot read {flag} folder {path}: {error.strerror or error}") from None
    return stat.st_dev, stat.st_ino


def _files_under(directory, flag, root, ancestors):
    """Every file below `directory` (any depth), sorted by path relative to `root` (as tar members are).

    `ancestors` holds the (device, inode) of the folders above it: a symbolic link back to one of them
    would make the walk endless."""
    key = _folder_key(directory, flag)
    if key in ancestors:
        raise PipelineError(f"{directory} under {flag} is a symbolic link to a folder that contains it (a loop); "
                            f"remove the link")
    sources = []
    for entry in _scandir_sorted(directory, flag):
        if _is_folder(entry):
            sources.extend(_files_under(entry.path, flag, root, ancestors | {key}))
        elif _is_file(entry):
            sources.append(_file_source(entry, root))
    return sorted(sources, key=lambda source: source.relative_path)


def list_class_folders(directory, flag):
    """({class name: [ImageSource]}, [NonImageFile]) for a folder with one sub-folder per class (files may
    be nested deeper). Class names are the folder names as they are (any characters).

    Files at the top level are ignored (e.g. the per-synset tars left next to extracted folders).
    """
    classes, non_images = {}, []
    entries = _scandir_sorted(directory, flag)
    top = frozenset({_folder_key(directory, flag)})
    for entry in entries:
        if _is_folder(entry):
            _check_class_name(entry.name, entry.path, flag)
            sources = _images_only(_files_under(entry.path, flag, entry.path, top), entry.name, non_images)
            if not sources:
                raise PipelineError(f"class folder {entry.path} under {flag} holds no images; restore its "
                                    f"images or remove the folder")
            classes[entry.name] = sources
    if not classes:
        raise PipelineError(f"{flag} {directory} has no class sub-folders (expected one folder per class)")
    return classes, non_images


def list_validation_directory(directory, flag):
    """("flat", [ImageSource], [NonImageFile]) or ("classes", {class name: [ImageSource]}, [NonImageFile])."""
    entries = _scandir_sorted(directory, flag)
    non_images = []
    files = _images_only([_file_source(entry, directory) for entry in entries if _is_file(entry)], "",
                         non_images)
    if any(_is_folder(entry) for entry in entries):
        if files:
            raise PipelineError(f"{flag} {directory} holds both image files and sub-folders; expected either "
                                f"flat images (with --validation_labels_file) or one folder per class")
        classes, class_non_images = list_class_folders(directory, flag)
        return "classes", classes, non_images + class_non_images
    if not files:
        raise PipelineError(f"{flag} {directory} holds no images")
    return "flat", files, non_images


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
        raise PipelineError(f"{flag} {tar_path} is not an uncompressed tar archive ({error}); the ILSVRC2012 "
                            f"image tars are plain .tar files") from None


def _tar_files(archive, flag, tar_path, base_offset=0, prefix=""):
    """ImageSources for the regular files of an open tar, in archive order, leaving out what is inside
    hidden folders (as folder listing does)."""
    try:
        for member in archive:
            # `tar -C folder .` names members "./x": the same file as "x", not one in a hidden folder.
            name = posixpath.normpath(member.name)
            folders = posixpath.dirname(name).split("/")
            if member.isfile() and not any(folder.startswith(".") for folder in folders):
                yield ImageSource(tar_path, prefix + name, base_offset + member.offset_data, member.size,
                                  int(member.mtime), name)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise PipelineError(f"{flag} {tar_path} is truncated or corrupt ({error}); download it again") from None


def _open_raw(tar_path, flag):
    # Checked before opening: opening a named pipe would wait for a writer, forever.
    if os.path.exists(tar_path) and not os.path.isfile(tar_path):
        raise PipelineError(f"{flag} {tar_path} is not a regular file (it is read by offset: a folder or "
                            f"a pipe will not do)")
    try:
        return open(tar_path, "rb", buffering=0)
    except FileNotFoundError:
        raise PipelineError(f"{flag} {tar_path} does not exist") from None
    except OSError as error:
        raise PipelineError(f"cannot read {flag} {tar_path}: {error.strerror or error}") from None


# Members of the training tar that hold a class's images in a form this reader cannot open in place.
_COMPRESSED_ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".zip",
                        ".gz", ".bz2", ".xz", ".7z", ".rar")


def list_train_tar(tar_path, flag="--train_tar"):
    """({class name: [ImageSource]}, [NonImageFile]) from ILSVRC2012_img_train.tar: a tar of
    `<class name>.tar` tars."""
    classes, non_images = {}, []
    with _open_raw(tar_path, flag) as raw_file:
        outer = _open_tar(raw_file, flag, tar_path)
        for inner_source in list(_tar_files(outer, flag, tar_path)):
            name = inner_source.member
            class_name, extension = os.path.splitext(os.path.basename(name))
            if class_name.startswith(".") or os.path.basename(name).startswith("."):
                continue  # hidden: tool droppings
            if extension != ".tar":
                if name.lower().endswith(_COMPRESSED_ARCHIVES):
                    raise PipelineError(
                        f"{tar_path}:{name} under {flag} is a compressed archive, not a plain "
                        "<class>.tar: unpack it and pack its images as an uncompressed .tar (or give "
                        "--train_directory)")
                # Anything else is no class: counted and named in the summary, never silently gone.
                non_images.append(NonImageFile("", f"{tar_path}:{name}", extension or "no extension"))
                continue
            _check_class_name(class_name, f"{tar_path}:{name}", flag)
            inner = _open_tar(raw_file, flag, f"{tar_path}:{name}", inner_source.offset, inner_source.size)
            sources = _images_only(_tar_files(inner, flag, tar_path, inner_source.offset, prefix=name + "/"),
                                   class_name, non_images)
            if not sources:
                raise PipelineError(f"{tar_path}:{name} under {flag} holds no images; download the archive "
                                    f"again")
            classes[class_name] = sorted(sources, key=lambda source: source.relative_path)
    if not classes:
        raise PipelineError(f"{flag} {tar_path} holds no <synset>.tar archives; is it ILSVRC2012_img_train.tar?")
    return dict(sorted(classes.items())), non_images


def list_flat_tar(tar_path, flag="--validation_tar"):
    """([ImageSource], [NonImageFile]) of a flat tar (ILSVRC2012_img_val.tar), sorted by file name."""
    non_images = []
    with _open_raw(tar_path, flag) as raw_file:
        sources = _images_only(_tar_files(_open_tar(raw_file, flag, tar_path), flag, tar_path), "", non_images)
    if not sources:
        raise PipelineError(f"{flag} {tar_path} holds no images")
    return sorted(sources, key=lambda source: source.file_name), non_images


def read_lines(path, flag):
    """Non-blank, stripped lines of a small text file, with (line number, text)."""
    try:
        # utf-8-sig: editors on Windows start UTF-8 files with a byte-order mark that is not text.
        with open(path, encoding="utf-8-sig") as text_file:
            return [(number, line.strip()) for number, line in enumerate(text_file, start=1) if line.strip()]
    except FileNotFoundError:
        raise PipelineError(f"{flag} {path} does not exist") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{flag} {path} is not UTF-8 text") from None
    except OSError as error:
        raise PipelineError(f"cannot read {flag} {path}: {error.strerror or error}") from None


def read_class_names(path, flag):
    """The class names of a labels file (one per line; spaces allowed), checking for duplicates."""
    names = []
    seen = {}
    for number, text in read_lines(path, flag):
        if text in seen:
            raise PipelineError(f"{flag} {path} line {number}: class {text!r} already on line {seen[text]}")
        if "\t" in text:
            raise PipelineError(f"{flag} {path} line {number}: expected one class name per line, got {text!r} "
                                f"('name<TAB>text' lines belong in --imagenet_metadata_file)")
        seen[text] = number
        names.append(text)
    if not names:
        raise PipelineError(f"{flag} {path} is empty")
    return names


def read_metadata(path, flag="--imagenet_metadata_file"):
    """{class name: human-readable text} from `name<TAB>text` lines."""
    texts = {}
    for number, text in read_lines(path, flag):
        name, tab, human = text.partition("\t")
        if not tab:
            raise PipelineError(f"{flag} {path} line {number}: expected 'class name<TAB>text', got {text!r}")
        texts[name.strip()] = human.strip()
    return texts
