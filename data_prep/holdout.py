"""A validation split held out of the training images: seeded, stratified and reproducible by hand.

A class with n images keeps k = floor(fraction * n + 0.5) of them for validation, at least 1 and at most
n - 1, so that every class is in both splits. The k held-out images are those whose
sha256("<seed>\\0<class name>\\0<relative path>") hex digest sorts first, where the relative path is the
image's path inside its class folder. So the split depends only on the seed, the fraction and the file
names: not on the number of workers, the listing order or whether the input is folders or a tar; and
adding an image to a class moves at most one of the class's other images from one split to the other.
"""

import csv
import hashlib
import io
import math

from official.utils.errors import PipelineError


def held_out_count(num_images, fraction):
    """How many of a class's `num_images` go to validation (num_images >= 2)."""
    return min(num_images - 1, max(1, math.floor(fraction * num_images + 0.5)))


def _rank(seed, class_name, source):
    key = f"{seed}\0{class_name}\0{source.relative_path}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def split_classes(classes, fraction, seed):
    """({class name: [ImageSource]} to train on, {class name: [ImageSource]} held out) for `classes`
    ({class name: [ImageSource]}, every class that needs both splits); each list keeps its input order."""
    too_few = [(name, len(sources)) for name, sources in classes.items() if len(sources) < 2]
    if too_few:
        name, count = too_few[0]
        raise PipelineError(f"--validation_fraction needs at least 2 images in every class (one to hold out, "
                            f"one to train on), but {len(too_few)} classes have fewer (first: {name!r} with "
                            f"{count}); add images to them or leave them out of the dataset")
    train, validation = {}, {}
    for name, sources in classes.items():
        ranked = sorted(sources, key=lambda source: _rank(seed, name, source))
        held_out = set(ranked[:held_out_count(len(sources), fraction)])
        train[name] = [source for source in sources if source not in held_out]
        validation[name] = [source for source in sources if source in held_out]
    return train, validation


def held_out_list(validation):
    """The held-out images as tab-separated 'class, path' rows (relative paths; csv quoting for names with
    tabs, quotes or line breaks) under a header, classes in the given order."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    writer.writerow(["class", "path"])
    writer.writerows([name, source.relative_path] for name, sources in validation.items() for source in sources)
    return text.getvalue()
