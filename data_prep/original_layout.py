"""Packs class folders into ImageNet's original archive layouts, the ones data_prep reads: the
ILSVRC2012_img_train.tar of per-class tars, and a flat tar (the validation images).

Members carry a fixed modification time, so the same folders always give the same archive bytes.
"""

import io
import os
import tarfile


def _add_bytes(archive, name, data, mtime=1_600_000_000):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    archive.addfile(info, io.BytesIO(data))


def make_train_tar(train_directory, tar_path):
    """The ILSVRC2012_img_train.tar layout: one `<synset>.tar` per class holding that class's files.

    Members are paths relative to the class folder (flat file names in the original).
    """
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as outer:
        for synset in sorted(os.listdir(train_directory)):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w", format=tarfile.GNU_FORMAT) as inner:
                class_folder = os.path.join(train_directory, synset)
                for folder, _, files in sorted(os.walk(class_folder), reverse=True):  # order must not matter
                    for name in files:
                        path = os.path.join(folder, name)
                        with open(path, "rb") as image_file:
                            _add_bytes(inner, os.path.relpath(path, class_folder), image_file.read())
            _add_bytes(outer, f"{synset}.tar", inner_bytes.getvalue())


def make_flat_tar(directory, tar_path):
    """A tar of the files of `directory`, flat (as ILSVRC2012_img_val.tar)."""
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as archive:
        for name in sorted(os.listdir(directory), reverse=True):  # archive order must not matter
            with open(os.path.join(directory, name), "rb") as image_file:
                _add_bytes(archive, name, image_file.read())
