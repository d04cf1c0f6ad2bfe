r"""Checks every record of a directory of TFRecord shards and lists the bad ones.

    python -m official.xception.verify_shards --data_dir=/data/imagenet-tfrecords [--split=validation]

Each record is read (checksums), parsed as the training pipeline parses it and its image decoded as
evaluation decodes it; with build_summary.json, each shard's record count is compared with the one
data_prep wrote. Progress (shards, rate, ETA) goes to stderr; every bad record is printed as
`path record N: problem`, and the exit status is 1 when there is any. It lives beside the trainer, not
in data_prep, because it checks what the trainer reads, with the trainer's own parser and decoder, in
shards from any tool.
"""

import sys

from absl import app
from absl import flags

from official.utils import flags_core
from official.utils import logging_setup
from official.utils.errors import PipelineError
from official.xception import shard_check


def define_flags():
    flags.DEFINE_string("data_dir", None, "Directory of the TFRecord shards.")
    flags.DEFINE_enum("split", "all", ["all", *shard_check.SPLITS], "Which shards to check (all: "
                      "every split present).")
    flags.DEFINE_boolean("check_images", True, "Decode every image (about 1.5 ms each per core); "
                         "--nocheck_images reads and parses at disk speed.")
    flags.DEFINE_integer("num_threads", None, "Shards checked at once (default: one per core, up to "
                         "32).")
    flags.mark_flag_as_required("data_dir")
    flags_core.set_ranges({"num_threads": flags_core.AT_LEAST_1})


def main(argv):
    del argv
    logging_setup.log_through_absl_only()
    flag_values = flags.FLAGS
    splits = (flag_values.split,)
    if flag_values.split == "all":
        # A directory of one split (e.g. validation only) is checked as it is.
        splits = shard_check.present_splits(flag_values.data_dir) or tuple(shard_check.SPLITS)
    try:
        problem = flags_core.check_numeric_flags(flag_values)
        if problem:
            raise PipelineError(problem)
        result = shard_check.scan_shards(flag_values.data_dir, splits,
                                         check_images=flag_values.check_images,
                                         num_threads=flag_values.num_threads)
    except PipelineError as error:
        sys.exit(f"error: {error}")
    for bad in result.bad:
        print(bad.line())
    bad_shards = sorted({bad.path for bad in result.bad})
    summary = (f"{result.shards} shards, {result.records:,} records read, {len(result.bad)} bad "
               f"records in {len(bad_shards)} shards")
    if bad_shards:
        sys.exit(f"error: {summary}: re-run the data_prep build command (it rewrites shards whose "
                 "checksum no longer matches) or copy these shards again; or train with "
                 "--skip_corrupt_records")
    print(f"ok: {summary}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
