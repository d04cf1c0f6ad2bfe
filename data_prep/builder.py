"""Raw ImageNet → shuffled, balanced, deterministic and restartable TFRecord shards.

The build process lists inputs, plans every shard (which images, in which order), then hands shards to
worker processes. Each shard's bytes depend only on its plan, so output is identical for any number of
workers, and a finished shard that the summary vouches for (same plan digest, size and SHA-256) is reused
when the same command runs again.

Progress is durable without rewriting the summary after every shard: each finished shard appends one line
to build_journal.jsonl (see _Journal), and build_summary.json is written when the build ends, fails or is
interrupted (and when it starts over a complete one); so the build process's cost per shard does not grow
with the number of shards or classes (docs/DESIGN.md §5.1).

Class names are the class folder names, whatever they are (ImageNet synsets, "Golden retriever",
"café"); without a separate validation set, --validation_fraction holds out part of every class (holdout).
build_summary.json describes the result; its schema is in _Summary's docstring.
"""

import collections
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import queue
import re
import signal
import sys
import time
import traceback
import typing
import unicodedata

from data_prep import bounding_boxes
from data_prep import holdout
from data_prep import inputs
from data_prep import shard_plan
from official.utils.errors import PipelineError
from official.utils.progress import ProgressReporter, format_duration

SUMMARY_NAME = "build_summary.json"
HOLDOUT_LIST_NAME = "validation_holdout.tsv"
JOURNAL_NAME = "build_journal.jsonl"
LOCK_NAME = ".build_lock"
_SHARD_PATTERN = re.compile(r"^(train|validation)-(\d{5})-of-(\d{5})$")
# How often the build process checks that its workers are alive while it waits for a shard.
_WORKER_CHECK_SECONDS = 1.0


@dataclasses.dataclass
class BuildConfig:
    output_directory: str
    train_directory: typing.Optional[str] = None
    train_tar: typing.Optional[str] = None
    validation_directory: typing.Optional[str] = None
    validation_tar: typing.Optional[str] = None
    validation_labels_file: typing.Optional[str] = None
    labels_file: typing.Optional[str] = None
    imagenet_metadata_file: typing.Optional[str] = None
    bounding_box_file: typing.Optional[str] = None
    # Hold out this fraction of every class's training images as the validation split (see holdout).
    validation_fraction: typing.Optional[float] = None
    train_shards: int = 1024
    validation_shards: int = 128
    num_workers: int = 1
    first_label: int = 1
    seed: int = 0
    max_bad_files: int = 10
    max_pixels: int = 100_000_000
    progress_interval: float = 10.0


def _check_config(config):
    if config.train_directory and config.train_tar:
        raise PipelineError("give --train_directory or --train_tar, not both")
    if config.validation_directory and config.validation_tar:
        raise PipelineError("give --validation_directory or --validation_tar, not both")
    if config.validation_labels_file and not (config.validation_directory or config.validation_tar):
        raise PipelineError("--validation_labels_file needs --validation_directory or --validation_tar")
    if config.validation_fraction is not None:
        if config.validation_directory or config.validation_tar:
            raise PipelineError("give --validation_fraction (hold out part of the training images) or "
                                "--validation_directory/--validation_tar (a separate validation set), not both")
        if not (config.train_directory or config.train_tar):
            raise PipelineError("--validation_fraction holds out part of the training images: give "
                                "--train_directory or --train_tar")
        if not 0 < config.validation_fraction < 1:
            raise PipelineError(f"--validation_fraction must be between 0 and 1 (e.g. 0.1 holds out 10% of "
                                f"every class), not {config.validation_fraction}")
    if not (config.train_directory or config.train_tar or config.validation_directory or config.validation_tar):
        raise PipelineError("nothing to build: give --train_directory/--train_tar and/or "
                            "--validation_directory/--validation_tar")
    # Before listing the inputs, which takes minutes for the ImageNet tars.
    for flag, path in (("--train_directory", config.train_directory), ("--train_tar", config.train_tar),
                       ("--validation_directory", config.validation_directory),
                       ("--validation_tar", config.validation_tar),
                       ("--validation_labels_file", config.validation_labels_file),
                       ("--labels_file", config.labels_file),
                       ("--imagenet_metadata_file", config.imagenet_metadata_file),
                       ("--bounding_box_file", config.bounding_box_file)):
        if path and not os.path.exists(path):
            raise PipelineError(f"{flag} {path} does not exist")
    # Shards and the build's lock inside an image folder would be listed as its images or classes.
    output = os.path.realpath(config.output_directory)
    for flag, path in (("--train_directory", config.train_directory),
                       ("--validation_directory", config.validation_directory)):
        if path and (output + os.sep).startswith(os.path.realpath(path) + os.sep):
            raise PipelineError(f"--output_directory {config.output_directory} is inside {flag} {path}: "
                                "give an output directory outside the images")
    if config.first_label not in (0, 1):
        raise PipelineError(f"--first_label must be 1 (labels 1..N, 0 = background, the established "
                            f"convention) or 0 (labels 0..N-1), not {config.first_label}")
    for flag, value, minimum in (("--train_shards", config.train_shards, 1),
                                 ("--validation_shards", config.validation_shards, 1),
                                 ("--num_workers", config.num_workers, 1),
                                 ("--max_bad_files", config.max_bad_files, 0),
                                 ("--max_pixels", config.max_pixels, 1)):
        if value < minimum:
            raise PipelineError(f"{flag} must be at least {minimum}, not {value}")


@dataclasses.dataclass
class _SplitPlan:
    name: str
    entries: list          # shuffled ShardEntry list
    num_shards: int
    non_images: list       # inputs.NonImageFile found among this split's inputs


@dataclasses.dataclass
class _Plan:
    synsets: list          # class names in label order
    labels: dict           # class name → label
    texts: dict            # class name → image/class/text
    splits: list           # _SplitPlan, train first
    held_out: typing.Optional[dict]  # {class name: [ImageSource]} held out by --validation_fraction


def _class_texts(config, synsets):
    if not config.imagenet_metadata_file:
        return {synset: synset for synset in synsets}
    metadata = inputs.read_metadata(config.imagenet_metadata_file)
    missing = [synset for synset in synsets if synset not in metadata]
    if missing:
        raise PipelineError(f"--imagenet_metadata_file {config.imagenet_metadata_file} has no line for "
                            f"{len(missing)} classes (first: {missing[0]!r}); give every class a line")
    return {synset: metadata[synset] for synset in synsets}


def _check_known(synsets, labels, what):
    unknown = [synset for synset in synsets if synset not in labels]
    if unknown:
        hint = ""
        if unicodedata.normalize("NFC", unknown[0]) in {unicodedata.normalize("NFC", name) for name in labels}:
            # macOS writes folder names decomposed (e + combining accent), most editors composed (é).
            hint = " (it differs from a line of --labels_file only in how accents are encoded: retype the line)"
        raise PipelineError(f"{what} has {len(unknown)} classes that are not among the classes of "
                            f"--labels_file (first: {unknown[0]!r}){hint}; fix --labels_file or the input")


def _validation_sources(config, labels):
    """([(synset, ImageSource)], [NonImageFile]) for the validation split."""
    flag = "--validation_directory" if config.validation_directory else "--validation_tar"
    if config.validation_directory:
        layout, listing, non_images = inputs.list_validation_directory(config.validation_directory, flag)
    else:
        layout, (listing, non_images) = "flat", inputs.list_flat_tar(config.validation_tar, flag)
    if layout == "classes":
        if config.validation_labels_file:
            raise PipelineError(f"{flag} {config.validation_directory} is already in class folders; drop "
                                f"--validation_labels_file (it is for flat validation images)")
        _check_known(listing, labels, f"{flag} {config.validation_directory}")
        return [(synset, source) for synset, sources in listing.items() for source in sources], non_images
    if not config.validation_labels_file:
        raise PipelineError(f"{flag} holds flat images: give --validation_labels_file (one synset per line, "
                            f"in sorted file-name order)")
    lines = inputs.read_lines(config.validation_labels_file, "--validation_labels_file")
    if len(lines) != len(listing):
        raise PipelineError(f"--validation_labels_file {config.validation_labels_file} has {len(lines):,} "
                            f"labels but {flag} holds {len(listing):,} images; they must match one to one")
    for number, synset in lines:
        if synset not in labels:
            raise PipelineError(f"--validation_labels_file {config.validation_labels_file} line {number}: "
                                f"synset {synset} is not among the classes; fix --labels_file or the labels")
    return [(synset, source) for (_, synset), source in zip(lines, listing)], non_images


def _plan_splits(config, log):
    train_classes, train_non_images = None, []
    if config.train_directory:
        train_classes, train_non_images = inputs.list_class_folders(config.train_directory, "--train_directory")
    elif config.train_tar:
        train_classes, train_non_images = inputs.list_train_tar(config.train_tar, "--train_tar")
    if config.labels_file:
        synsets = inputs.read_class_names(config.labels_file, "--labels_file")
    elif train_classes is not None:
        synsets = sorted(train_classes)
    else:
        raise PipelineError("give --labels_file: without training images the class list (and so the labels) "
                            "cannot be derived")
    labels = {synset: index + config.first_label for index, synset in enumerate(synsets)}
    texts = _class_texts(config, synsets)
    boxes = bounding_boxes.read_box_csv(config.bounding_box_file) if config.bounding_box_file else {}

    def entry(synset, source):
        return shard_plan.ShardEntry(source, labels[synset], synset, texts[synset],
                                     tuple(boxes.get(source.file_name, ())))

    def pairs(classes):
        return [(synset, source) for synset in synsets for source in classes.get(synset, ())]

    split_sources, held_out = {}, None
    if train_classes is not None:
        _check_known(train_classes, labels, "--train_directory" if config.train_directory else "--train_tar")
        if config.validation_fraction is not None:
            train_classes, held_out = holdout.split_classes(
                {synset: train_classes.get(synset, []) for synset in synsets}, config.validation_fraction,
                config.seed)
        missing = [synset for synset in synsets if synset not in train_classes]
        if missing:
            log.write(f"warning: {len(missing)} classes of --labels_file have no training images "
                      f"(first: {missing[0]!r})\n")
        split_sources["train"] = pairs(train_classes), train_non_images
    if held_out is not None:
        split_sources["validation"] = pairs(held_out), []
    elif config.validation_directory or config.validation_tar:
        split_sources["validation"] = _validation_sources(config, labels)

    plans = []
    for name, (split_pairs, non_images) in split_sources.items():
        num_shards = config.train_shards if name == "train" else config.validation_shards
        if num_shards > len(split_pairs):
            raise PipelineError(f"--{name}_shards={num_shards} is more than the {len(split_pairs):,} {name} "
                                f"images; use at most {len(split_pairs):,} shards")
        entries = shard_plan.shuffled([entry(synset, source) for synset, source in split_pairs], config.seed)
        plans.append(_SplitPlan(name, entries, num_shards, non_images))
    if config.bounding_box_file:
        _check_boxes_match(config.bounding_box_file, boxes, plans, log)
    return _Plan(synsets, labels, texts, plans, held_out)


def _check_boxes_match(path, boxes, plans, log):
    """A box CSV for another dataset (or file naming) would otherwise give every image no box, silently."""
    planned_names = {entry.source.file_name for plan in plans for entry in plan.entries}
    if not boxes:
        raise PipelineError(f"--bounding_box_file {path} holds no boxes; rebuild it with "
                            f"data_prep.process_bounding_boxes or leave the flag out")
    unmatched = [name for name in boxes if name not in planned_names]
    if len(unmatched) == len(boxes):
        raise PipelineError(f"--bounding_box_file {path} has boxes for {len(boxes):,} images, but none of them "
                            f"is among the {len(planned_names):,} input images (first: {unmatched[0]!r}); is it "
                            f"the CSV for this dataset?")
    if unmatched:
        log.write(f"warning: --bounding_box_file {path}: {len(unmatched):,} of its {len(boxes):,} images are not "
                  f"in the input (first: {unmatched[0]!r}); their boxes are not used\n")


class _OutputDirectory:
    """Creates, locks and tidies the output directory; holds the lock until closed."""

    def __init__(self, path):
        self.path = path
        try:
            os.makedirs(path, exist_ok=True)
            self._lock_file = open(os.path.join(path, LOCK_NAME), "a")
        except OSError as error:
            raise PipelineError(f"cannot write --output_directory {path}: {error.strerror or error}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise PipelineError(f"another build is writing to --output_directory {path}; wait for it or use "
                                f"another folder") from None

    def check_no_foreign_shards(self, plans):
        counts = {plan.name: plan.num_shards for plan in plans}
        for name in sorted(os.listdir(self.path)):
            match = _SHARD_PATTERN.match(name)
            if match and match.group(1) in counts and int(match.group(3)) != counts[match.group(1)]:
                raise PipelineError(
                    f"--output_directory {self.path} holds {name} from a build with another shard count; "
                    f"readers would mix them: remove the old {match.group(1)}-* shards or use another folder")

    def remove_incomplete_files(self):
        for name in os.listdir(self.path):
            if name.startswith(shard_plan.incomplete_name("")):
                os.remove(os.path.join(self.path, name))

    def close(self):
        self._lock_file.close()


def _read_previous_summary(path, log):
    try:
        with open(path, encoding="utf-8") as summary_file:
            return json.load(summary_file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.write(f"warning: ignoring unreadable {path} ({error}); every shard will be rebuilt\n")
        return {}


class _Journal:
    """build_journal.jsonl: one line `{"shard": name, <its summary entry>}` per shard finished (built, or
    verified and reused), appended as it finishes, so a killed build's successor knows what to reuse.

    Only ever appended to (one write per line), and removed once a complete summary has been written; a
    build killed mid-line leaves a torn last line, which readers skip and the next run terminates before
    appending. Nothing in it is trusted blindly: a shard is reused only when its plan digest, size and
    SHA-256 still match (shard_writer), so a line lost or torn costs a rebuild of that shard, never its
    bytes. That is also why it is not fsynced: the shards are, before their final rename.
    """

    def __init__(self, output_directory):
        self.path = os.path.join(output_directory, JOURNAL_NAME)
        self._descriptor = None

    def read(self, log):
        """{shard name: summary entry} of the lines written so far (the last line for a shard wins)."""
        shards = {}
        try:
            with open(self.path, encoding="ascii", errors="replace") as journal_file:
                for line in journal_file:
                    try:
                        entry = json.loads(line)
                        shards[entry.pop("shard")] = entry
                    except (ValueError, KeyError, AttributeError, TypeError):
                        continue  # a line torn by a kill mid-write: that shard is rebuilt
        except FileNotFoundError:
            pass
        except OSError as error:
            log.write(f"warning: ignoring unreadable {self.path} ({error.strerror or error}); shards it "
                      f"lists will be rebuilt\n")
        return shards

    def open(self):
        try:
            # Read-write so that the last byte can be checked; O_APPEND puts every write at the end.
            self._descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self._descriptor).st_size
            if size and os.pread(self._descriptor, 1, size - 1) != b"\n":
                self._write(b"\n")  # ends a torn last line, so that the next one parses
        except OSError as error:
            raise PipelineError(f"cannot write {self.path}: {error.strerror or error}") from None

    def _write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self._descriptor, view):]

    def append(self, name, entry):
        # ensure_ascii: file names that are not UTF-8 travel as \udcXX escapes, as in the summary.
        line = json.dumps({"shard": name, **entry}, ensure_ascii=True, separators=(",", ":")) + "\n"
        try:
            self._write(line.encode("ascii"))
        except OSError as error:
            raise PipelineError(f"cannot write {self.path}: {error.strerror or error}; check free space of "
                                f"--output_directory") from None

    def close(self):
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def remove(self):
        """After a complete summary, which holds everything the journal did."""
        self.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def _fsync_folder(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomically(path, text):
    temporary = path + ".incomplete"
    with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as output:
        output.write(text)
        output.flush()
        os.fsync(output.fileno())
    os.replace(temporary, path)
    # Also makes durable every rename before it, e.g. of the shards a complete summary vouches for.
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def _check_kept_splits_match(previous, plan, first_label, output_directory):
    """Shards of a split this run does not rebuild stay; their labels must still mean the same classes."""
    rebuilt = {split.name for split in plan.splits}
    kept = {}  # shard name → split
    for name in sorted(os.listdir(output_directory)):
        match = _SHARD_PATTERN.match(name)
        if match and match.group(1) not in rebuilt:
            kept[name] = match.group(1)
    unknown = [name for name in kept if name not in previous.get("shards", {})]
    if unknown:
        raise PipelineError(f"{output_directory} holds {unknown[0]} (and {len(unknown) - 1} more), which "
                            f"{SUMMARY_NAME} does not describe, so its labels cannot be checked against this run's "
                            f"classes: rebuild the {kept[unknown[0]]} split in this run (give its input too) or "
                            f"remove the old {kept[unknown[0]]}-* shards")
    splits = "/".join(sorted(set(kept.values())))
    old_classes = [(entry.get("label"), entry.get("name")) for entry in previous.get("classes", [])]
    new_classes = [(plan.labels[synset], synset) for synset in plan.synsets]
    if not kept or (old_classes == new_classes and previous.get("first_label") == first_label):
        return
    changes = [f"{name!r} is now label {label}" for label, name in new_classes if (label, name) not in old_classes]
    changes += [f"{name!r} is gone" for _, name in old_classes if name not in plan.labels]
    raise PipelineError(
        f"the {splits} shards in {output_directory} were built with another class list ({len(old_classes)} classes, "
        f"now {len(new_classes)}: {changes[0] if changes else '--first_label differs'}), so their labels would "
        f"disagree: rebuild them in this run (give their input too) or remove the old {splits}-* shards")


def _make_tasks(config, plans, previous_shards):
    tasks = []
    for plan in plans:
        for index, (start, end) in enumerate(shard_plan.shard_bounds(len(plan.entries), plan.num_shards)):
            entries = tuple(plan.entries[start:end])
            digest = shard_plan.plan_digest(plan.name, index, plan.num_shards, entries, config.max_pixels)
            name = shard_plan.shard_name(plan.name, index, plan.num_shards)
            previous = previous_shards.get(name)
            if previous is None or previous.get("plan_digest") != digest:
                previous = None
            tasks.append(shard_plan.ShardTask(plan.name, index, plan.num_shards, entries,
                                              os.path.abspath(config.output_directory), config.max_pixels,
                                              digest, previous))
    return tasks


def _init_worker():
    # Ctrl-C reaches the whole process group: the build process alone handles it (and stops the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # Die with the build process: a SIGKILLed build must not leave workers writing shards behind it.
        import ctypes
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _worker_main(task_queue, result_queue):
    """Builds shards from `task_queue` until it yields None; says which shard it starts, then the outcome."""
    _init_worker()
    for index, task in iter(task_queue.get, None):
        result_queue.put(("started", index, os.getpid()))
        try:
            result_queue.put(("done", index, run_shard_task(task)))
        except PipelineError as error:
            result_queue.put(("bad input", index, str(error)))
        except Exception:  # a bug: its traceback goes to the build process, which re-raises it
            result_queue.put(("crashed", index, traceback.format_exc()))


def _describe_exit(exitcode):
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        return f"was killed by {name}" + (" (what the out-of-memory killer sends: see dmesg)"
                                          if -exitcode == signal.SIGKILL else "")
    return f"exited with code {exitcode}"


def _run_in_workers(tasks, num_workers):
    """Yields ShardResults as worker processes finish shards. A worker that dies (e.g. killed by the kernel
    when memory runs out) fails the build at once, naming it and its shard; multiprocessing.Pool would
    wait forever for that shard instead."""
    # Not 'fork': the caller may have TensorFlow running, and forking it is unsafe. A fork server (a fresh
    # process) imports TensorFlow once, before any of it runs, and forks every worker from there: one
    # import instead of one per worker (seconds of CPU each), and the workers share its memory.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["data_prep.shard_writer"])
    task_queue, result_queue = context.Queue(), context.Queue()
    for item in enumerate(tasks):
        task_queue.put(item)
    workers = [context.Process(target=_worker_main, args=(task_queue, result_queue), daemon=True)
               for _ in range(min(num_workers, len(tasks)))]
    for _ in workers:
        task_queue.put(None)
    for worker in workers:
        worker.start()
    shard_of_worker, finished = {}, 0
    try:
        while finished < len(tasks):
            try:
                kind, index, payload = result_queue.get(timeout=_WORKER_CHECK_SECONDS)
            except queue.Empty:
                dead = [worker for worker in workers if worker.exitcode not in (None, 0)]
                if dead:
                    index = shard_of_worker.get(dead[0].pid)
                    shard = tasks[index].name if index is not None else "the shard it had just taken"
                    raise PipelineError(
                        f"build worker {dead[0].pid} {_describe_exit(dead[0].exitcode)} while building {shard}; "
                        f"the {finished} shards done so far are kept: run the same command again to "
                        f"resume (with fewer --num_workers if memory is short)") from None
                continue
            if kind == "started":
                shard_of_worker[payload] = index
            elif kind == "done":
                finished += 1
                yield payload
            elif kind == "bad input":
                raise PipelineError(payload)
            else:
                raise RuntimeError(f"building {tasks[index].name} failed in a worker process:\n{payload}")
        for worker in workers:
            worker.join()  # each exits on its None; stopping one mid-exit upsets multiprocessing's cleanup
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join()
        task_queue.cancel_join_thread()  # unsent tasks must not keep this process from exiting


def run_shard_task(task):
    """Worker entry point (picklable by reference for worker processes)."""
    # TensorFlow loads here, in the worker, never in the process that starts the workers.
    from data_prep import shard_writer
    return shard_writer.write_shard(task)


def _run_tasks(tasks, num_workers):
    """Yields ShardResults as shards finish; worker processes when num_workers > 1, else this process."""
    if num_workers == 1:
        yield from map(run_shard_task, tasks)
        return
    yield from _run_in_workers(tasks, num_workers)


def _kind_counts(non_images):
    return dict(sorted(collections.Counter(non_image.kind for non_image in non_images).items()))


class _Summary:
    """build_summary.json, written atomically when the build ends, fails or is interrupted (and when it
    starts over a complete one) so that a later run can trust it; between those, _Journal records each
    finished shard.

    Schema (readers rely on the keys marked *; the rest is for people and may grow):
      status*                 "in_progress", "failed" or "complete"; only "complete" vouches for every shard
      first_label*            label of the first class: 1 (0 = background) or 0
      classes*                [{"label", "name", "text"}] for every class in label order; "name" is the class
                              folder name (image/class/synset), "text" image/class/text (the metadata text,
                              else the name)
      settings                the BuildConfig fields, plus label_range [first, last]
      validation_holdout      null, or how --validation_fraction chose the validation split: {"fraction",
                              "seed", "images", "file_list" (a file next to this one listing each held-out
                              image as 'class<TAB>path inside the class folder'), "file_list_sha256"}
      splits*                 {"train"|"validation": {
                                num_shards, shards_done,
                                images_found      images planned into the split's shards
                                images_written*   records in the shards done so far
                                images_skipped    unusable images (listed in skipped_files)
                                non_image_files_skipped, non_image_files_by_kind {".txt": 3, ...}: files
                                                  that are not images, skipped without a warning
                                classes*          {name: {label*, text*, images_found, images_skipped,
                                                  non_image_files_skipped}} for classes present in the split
                              }}
      skipped_files           [{"split", "path", "reason"}] unusable images
      converted_files         [{"split", "path", "conversion"}] images stored after conversion to RGB JPEG
      elapsed_seconds, shards_reused_from_earlier_run, worker_seconds_per_stage
      shards                  {shard name: {records, bytes, sha256, plan_digest, skipped, converted}}
    """

    def __init__(self, config, plan, holdout_summary, previous):
        self.path = os.path.join(config.output_directory, SUMMARY_NAME)
        planned_names = {shard_plan.shard_name(split.name, index, split.num_shards)
                         for split in plan.splits for index in range(split.num_shards)}
        # Shards of this plan count only once a worker has (re)built or verified them in this run; others
        # (e.g. the split not being rebuilt now) are kept so a later run can still reuse them.
        self.shards = {name: entry for name, entry in previous.get("shards", {}).items()
                       if name not in planned_names and os.path.exists(os.path.join(config.output_directory, name))}
        self._plan = plan
        self._first_label = config.first_label
        self._holdout_summary = holdout_summary
        self._settings = {key: value for key, value in dataclasses.asdict(config).items()
                          if key != "progress_interval"}
        self._settings["label_range"] = [config.first_label, config.first_label + len(plan.synsets) - 1]
        self.stage_seconds = collections.defaultdict(float)
        self.reused = 0
        # Of this run's shards (each is recorded once), kept as a count: checked after every shard.
        self.bad_files = 0
        self.start = time.monotonic()

    def record(self, result):
        self.shards[result.name] = result.summary_entry()
        self.reused += result.reused
        self.bad_files += len(result.skipped)
        for stage, seconds in result.stage_seconds.items():
            self.stage_seconds[stage] += seconds

    def _current_shards(self, split):
        names = [shard_plan.shard_name(split.name, index, split.num_shards) for index in range(split.num_shards)]
        return {name: self.shards[name] for name in names if name in self.shards}

    def content(self, status):
        plan = self._plan
        splits, skipped_files, converted_files = {}, [], []
        for split in plan.splits:
            shards = self._current_shards(split)
            skipped_per_class = collections.Counter()
            for entry in shards.values():
                for path, synset, reason in entry["skipped"]:
                    skipped_per_class[synset] += 1
                    skipped_files.append({"split": split.name, "path": path, "reason": reason})
                converted_files.extend({"split": split.name, "path": path, "conversion": conversion}
                                       for path, conversion in entry["converted"])
            planned_per_class = collections.Counter(entry.synset for entry in split.entries)
            non_images_per_class = collections.Counter(non_image.class_name for non_image in split.non_images)
            splits[split.name] = {
                "num_shards": split.num_shards,
                "shards_done": len(shards),
                "images_found": len(split.entries),
                "images_written": sum(entry["records"] for entry in shards.values()),
                "images_skipped": sum(skipped_per_class.values()),
                "non_image_files_skipped": len(split.non_images),
                "non_image_files_by_kind": _kind_counts(split.non_images),
                "classes": {synset: {"label": plan.labels[synset], "text": plan.texts[synset],
                                     "images_found": planned_per_class[synset],
                                     "images_skipped": skipped_per_class[synset],
                                     "non_image_files_skipped": non_images_per_class[synset]}
                            for synset in plan.synsets if planned_per_class[synset]},
            }
        return {
            "status": status,
            "first_label": self._first_label,
            "classes": [{"label": plan.labels[synset], "name": synset, "text": plan.texts[synset]}
                        for synset in plan.synsets],
            "settings": self._settings,
            "validation_holdout": self._holdout_summary,
            "splits": splits,
            "skipped_files": skipped_files,
            "converted_files": converted_files,
            "elapsed_seconds": round(time.monotonic() - self.start, 3),
            "shards_reused_from_earlier_run": self.reused,
            "worker_seconds_per_stage": {stage: round(seconds, 3)
                                         for stage, seconds in sorted(self.stage_seconds.items())},
            "shards": self.shards,
        }

    def write(self, status):
        """Writes the summary; returns what it wrote."""
        content = self.content(status)
        try:
            _write_atomically(self.path, json.dumps(content, indent=1))
        except OSError as error:
            raise PipelineError(f"cannot write {self.path}: {error.strerror or error}") from None
        return content


def _write_holdout_list(config, plan):
    """Writes the held-out file list when this run holds out its validation split; returns the
    summary's validation_holdout entry."""
    path = os.path.join(config.output_directory, HOLDOUT_LIST_NAME)
    try:
        if plan.held_out is None:
            return None
        text = holdout.held_out_list(plan.held_out)
        _write_atomically(path, text)
    except OSError as error:
        raise PipelineError(f"cannot write {path}: {error.strerror or error}") from None
    return {"fraction": config.validation_fraction, "seed": config.seed,
            "images": sum(len(sources) for sources in plan.held_out.values()),
            "file_list": HOLDOUT_LIST_NAME,
            "file_list_sha256": hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()}


def _remove_replaced_holdout_list(config, plan):
    """Removes a held-out file list once this run's validation split from elsewhere has replaced the
    shards it described: not before, since until then an interrupted run leaves those shards in place."""
    path = os.path.join(config.output_directory, HOLDOUT_LIST_NAME)
    if plan.held_out is None and any(split.name == "validation" for split in plan.splits):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise PipelineError(f"cannot remove {path}: {error.strerror or error}") from None


def _describe_split(split, config):
    line = (f"{split.name}: {len(split.entries):,} images in {len({e.synset for e in split.entries}):,} "
            f"classes → {split.num_shards:,} shards")
    if split.name == "validation" and config.validation_fraction is not None:
        line += (f" (--validation_fraction={config.validation_fraction:g} of every training class, seed "
                 f"{config.seed}; listed in {HOLDOUT_LIST_NAME})")
    if split.non_images:
        kinds = ", ".join(f"{kind} ×{count}" for kind, count in _kind_counts(split.non_images).items())
        line += f"; {len(split.non_images):,} non-image files left out ({kinds})"
    return line + "\n"


def _warn_about_classes_without_images(content, log):
    for name, split in content["splits"].items():
        empty = [synset for synset, entry in split["classes"].items()
                 if entry["images_found"] == entry["images_skipped"]]
        if empty:
            log.write(f"warning: {len(empty)} classes have no usable {name} image (first: {empty[0]!r}); "
                      f"see 'skipped_files' in {SUMMARY_NAME}\n")


def build(config, log=None):
    """Builds the shards described by `config`; returns the summary (also written as build_summary.json)."""
    log = log or sys.stderr
    _check_config(config)
    output = _OutputDirectory(config.output_directory)
    try:
        plan = _plan_splits(config, log)
        output.check_no_foreign_shards(plan.splits)
        output.remove_incomplete_files()
        summary_path = os.path.join(config.output_directory, SUMMARY_NAME)
        journal = _Journal(config.output_directory)
        previous = _read_previous_summary(summary_path, log)
        # Shards finished since the summary was last written (by a build that was killed) count as well.
        previous["shards"] = {**previous.get("shards", {}), **journal.read(log)}
        _check_kept_splits_match(previous, plan, config.first_label, config.output_directory)
        tasks = _make_tasks(config, plan.splits, previous["shards"])
        summary = _Summary(config, plan, _write_holdout_list(config, plan), previous)
        if previous.get("status") == "complete":
            summary.write("in_progress")  # at once: it must not vouch for shards this run may replace
        journal.open()
        for split in plan.splits:
            log.write(_describe_split(split, config))
        planned_images = {task.name: len(task.entries) for task in tasks}
        progress = ProgressReporter("build", sum(planned_images.values()), interval=config.progress_interval,
                                    stream=log)
        try:
            for result in _run_tasks(tasks, config.num_workers):
                summary.record(result)
                journal.append(result.name, result.summary_entry())
                if result.reused:
                    progress.exclude(planned_images[result.name])
                else:
                    for path, _, reason in result.skipped:
                        log.write(f"warning: skipped {path}: {reason}\n")
                    for path, conversion in result.converted:
                        log.write(f"note: converted {path} ({conversion})\n")
                if summary.bad_files > config.max_bad_files:
                    raise PipelineError(f"{summary.bad_files} bad files, more than --max_bad_files="
                                        f"{config.max_bad_files}; see 'skipped_files' in {summary_path}, fix or "
                                        f"remove them (or raise --max_bad_files) and run the same command again")
                if not result.reused:
                    progress.advance(planned_images[result.name])
        except BaseException as error:  # a bad input or a dead worker (failed); Ctrl-C or a bug (unfinished)
            # Still vouching for the shards finished so far: a re-run reuses them (the journal stays too,
            # for the shards of an earlier run that this one had not verified yet).
            journal.close()
            summary.write("failed" if isinstance(error, PipelineError) else "in_progress")
            raise
        content = summary.write("complete")
        journal.remove()
        _remove_replaced_holdout_list(config, plan)
    finally:
        output.close()
    _warn_about_classes_without_images(content, log)
    log.write(f"done in {format_duration(content['elapsed_seconds'])}: " + ", ".join(
        f"{name} {split['images_written']:,} images ({split['images_skipped']:,} skipped)"
        for name, split in content["splits"].items())
        + (f"; {summary.reused} finished shards reused" if summary.reused else "") + "\n")
    return content
