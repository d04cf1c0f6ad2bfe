r"""A report of a run that a researcher can read at a glance: `report.md` and `report.png` in the model
directory, from its TensorBoard event files and its provenance record.

    python -m official.xception.report --model_dir=/ckpt/xception

The picture (1500x1100 pixels) has four panels against epochs: top-1 and top-5 of every evaluation
for the Polyak averages and for the raw weights, with the paper's 79.0 / 94.5 (which Keras's published
weights reach too: 0.790 / 0.945) as reference lines; the training cross-entropy (and the evaluation's);
the learning rate; images per second. The Markdown report shows the picture, a table of every
evaluation and a summary of the provenance records. It reads whatever the event files hold, so it
works on a run in progress, and on a multi-worker run's shared directory (the chief's summaries in
MODEL_DIR, the evaluator's in MODEL_DIR/eval). run_imagenet.sh writes it at the end of every run.
"""

import dataclasses
import datetime
import logging as std_logging
import math
import os
import sys
from typing import Dict, List, Optional, Tuple

from absl import app
from absl import flags
from matplotlib.figure import Figure
from tensorboard.backend.event_processing import event_accumulator
import tensorflow as tf

from official.utils import logging_setup
from official.utils import provenance
from official.utils.errors import PipelineError
from official.xception import model_fn as model_fn_lib
from official.xception import run_record

REPORT_NAME = "report.md"
PICTURE_NAME = "report.png"
# Inches and dots per inch of the picture: 1500 x 1100 pixels.
PICTURE_INCHES = (15, 11)
PICTURE_DPI = 100
EVAL_SUBDIR = "eval"
_SCALARS_PLUGIN = "scalars"
# Single-crop 299x299 ImageNet validation accuracy of Xception in the paper (Table 1), which Keras's
# published weights reproduce (0.790 / 0.945).
PAPER_TOP_1 = 0.790
PAPER_TOP_5 = 0.945

_TRAIN_TAGS = {
    # The model_fn's summary names can come out with a _1 suffix when a tensor of the same name
    # exists in the graph; both spellings are read.
    "cross_entropy": ("cross_entropy", "cross_entropy_1"),
    "learning_rate": ("learning_rate", "learning_rate_1"),
    "examples_per_sec": ("examples_per_sec",),
    "steps_per_sec": ("global_step/sec",),
}
_EVAL_COLUMNS = (
    ("top_1", model_fn_lib.TOP_1_KEY),
    ("top_5", model_fn_lib.TOP_5_KEY),
    ("raw_top_1", model_fn_lib.RAW_WEIGHTS_PREFIX + model_fn_lib.TOP_1_KEY),
    ("raw_top_5", model_fn_lib.RAW_WEIGHTS_PREFIX + model_fn_lib.TOP_5_KEY),
    ("cross_entropy", model_fn_lib.EVAL_CROSS_ENTROPY_KEY),
    ("raw_cross_entropy", model_fn_lib.RAW_WEIGHTS_PREFIX + model_fn_lib.EVAL_CROSS_ENTROPY_KEY),
    ("examples", model_fn_lib.EVAL_EXAMPLES_KEY),
)


@dataclasses.dataclass
class RunHistory:
    """What the event files and records of one model directory say."""

    evaluations: List[Dict[str, float]]  # one per evaluated step: "step" and _EVAL_COLUMNS' names
    training: Dict[str, List[Tuple[int, float]]]  # _TRAIN_TAGS' names -> [(step, value)]
    records: List[dict]
    steps_per_epoch: Optional[float]
    global_batch: Optional[int]
    last_step: Optional[int]  # the run's final step, from its flags


def _scalars(directory):
    """{tag: [(step, value)]} of the event files directly in `directory`, read by TensorBoard's own
    reader: TF1 scalar summaries (the Estimator's) and TF2 ones (tensors of the scalars plugin). A
    step written twice (an evaluation repeated after a restart) keeps its last value."""
    if not tf.io.gfile.isdir(directory):
        return {}
    accumulator = event_accumulator.EventAccumulator(
        directory, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    accumulator.Reload()
    events = {tag: [(event.wall_time, event.step, event.value)
                    for event in accumulator.Scalars(tag)]
              for tag in accumulator.Tags()[event_accumulator.SCALARS]}
    try:
        scalar_tensor_tags = accumulator.PluginTagToContent(_SCALARS_PLUGIN)
    except KeyError:  # no summary of that plugin
        scalar_tensor_tags = {}
    for tag in scalar_tensor_tags:
        events[tag] = [(event.wall_time, event.step, float(tf.make_ndarray(event.tensor_proto)))
                       for event in accumulator.Tensors(tag)]
    scalars = {}
    for tag, tag_events in events.items():
        by_step = {step: value for _, step, value in sorted(tag_events)}
        scalars[tag] = sorted(by_step.items())
    return scalars


def _training_shape(records):
    """(steps per epoch, global batch, final step) from the newest training record's flags."""
    for record in reversed(records):
        run_flags = record.get("flags")
        if not run_flags:
            continue
        batch = run_flags.get("batch_size")
        examples = run_flags.get("train_examples")
        if not batch or not examples:
            return None, batch, None
        steps_per_epoch = examples / batch
        last_step = math.ceil(run_flags.get("train_epochs", 0) * steps_per_epoch)
        if run_flags.get("max_train_steps") is not None:
            last_step = min(last_step, run_flags["max_train_steps"])
        return steps_per_epoch, batch, last_step
    return None, None, None


def read_history(model_dir):
    """The evaluations, training curves and provenance records of `model_dir`."""
    if not tf.io.gfile.isdir(model_dir):
        raise PipelineError(f"--model_dir={model_dir} is not a directory: give a model directory of "
                            "imagenet_main")
    training_scalars = _scalars(model_dir)
    eval_scalars = _scalars(os.path.join(model_dir, EVAL_SUBDIR))
    if not training_scalars and not eval_scalars:
        raise PipelineError(f"--model_dir={model_dir} holds no TensorBoard event files yet: give the "
                            "--model_dir of a run that has trained or evaluated")
    evaluations = {}
    for column, tag in _EVAL_COLUMNS:
        for step, value in eval_scalars.get(tag, []):
            evaluations.setdefault(step, {"step": step})[column] = value
    training = {}
    for name, tags in _TRAIN_TAGS.items():
        for tag in tags:
            if tag in training_scalars:
                training[name] = training_scalars[tag]
                break
    records = provenance.read_records(run_record.record_path(model_dir))
    steps_per_epoch, global_batch, last_step = _training_shape(records)
    return RunHistory([evaluations[step] for step in sorted(evaluations)], training, records,
                      steps_per_epoch, global_batch, last_step)


def _epochs(history, steps):
    return [step / history.steps_per_epoch if history.steps_per_epoch else step for step in steps]


def _images_per_second(history):
    if "examples_per_sec" in history.training:
        return history.training["examples_per_sec"]
    if "steps_per_sec" in history.training and history.global_batch:
        return [(step, rate * history.global_batch)
                for step, rate in history.training["steps_per_sec"]]
    return []


def _plot_curve(axes, history, points, **style):
    if points:
        steps, values = zip(*points)
        if len(points) == 1:
            style.setdefault("marker", "o")  # a line of one point draws nothing
        axes.plot(_epochs(history, steps), values, **style)


def draw(history, path, title):
    """Writes the four-panel picture to `path` (PNG, PICTURE_INCHES at PICTURE_DPI)."""
    # A Figure without pyplot draws with the Agg canvas: no display, no global state.
    figure = Figure(figsize=PICTURE_INCHES, dpi=PICTURE_DPI)
    figure.suptitle(title, fontsize=11)
    accuracy, entropy, rate, speed = figure.subplots(2, 2).flatten()
    x_label = "epoch" if history.steps_per_epoch else "global step"

    evaluated = history.evaluations
    for column, label, marker, linestyle in (("top_1", "top-1, averaged weights", "o", "-"),
                                             ("raw_top_1", "top-1, raw weights", "o", "--"),
                                             ("top_5", "top-5, averaged weights", "s", "-"),
                                             ("raw_top_5", "top-5, raw weights", "s", "--")):
        _plot_curve(accuracy, history,
                    [(row["step"], row[column]) for row in evaluated if column in row],
                    color="tab:blue" if column.endswith("1") else "tab:green", marker=marker,
                    linestyle=linestyle, label=label, alpha=0.6 if column.startswith("raw") else 1)
    accuracy.axhline(PAPER_TOP_1, color="tab:blue", linestyle=":", linewidth=1,
                     label=f"paper / Keras weights top-1 {PAPER_TOP_1:.3f}")
    accuracy.axhline(PAPER_TOP_5, color="tab:green", linestyle=":", linewidth=1,
                     label=f"paper / Keras weights top-5 {PAPER_TOP_5:.3f}")
    accuracy.set_ylim(0, 1.02)
    accuracy.set_title("validation accuracy")

    _plot_curve(entropy, history, history.training.get("cross_entropy", []), color="tab:red",
                label="training (batch)", linewidth=1)
    _plot_curve(entropy, history, [(row["step"], row["cross_entropy"]) for row in evaluated
                                   if "cross_entropy" in row],
                color="tab:purple", marker="o", label="validation, averaged weights")
    _plot_curve(entropy, history, [(row["step"], row["raw_cross_entropy"]) for row in evaluated
                                   if "raw_cross_entropy" in row],
                color="tab:purple", marker="o", linestyle="--", alpha=0.6,
                label="validation, raw weights")
    # Logarithmic: raw weights early in a run can be off by orders of magnitude.
    entropy.set_yscale("log")
    entropy.set_title("cross-entropy")

    _plot_curve(rate, history, history.training.get("learning_rate", []), color="tab:orange")
    rate.set_title("learning rate")
    _plot_curve(speed, history, _images_per_second(history), color="tab:gray")
    speed.set_title("training images / second")
    speed.set_ylim(bottom=0)

    for axes in (accuracy, entropy, rate, speed):
        if not (evaluated if axes is accuracy else axes.lines):
            axes.text(0.5, 0.5, "no summaries yet", ha="center", transform=axes.transAxes)
        axes.set_xlabel(x_label)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    _write_atomically(path, lambda temporary: figure.savefig(temporary, format="png"))


def _write_atomically(path, write):
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _percent(row, column):
    return f"{100 * row[column]:.2f}" if column in row else "–"


def _figure(row, column):
    return f"{row[column]:.4f}" if column in row else "–"


def markdown(history, model_dir, picture_name):
    """The report's text."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    steps = [row["step"] for row in history.evaluations]
    trained = max([step for points in history.training.values() for step, _ in points] + steps,
                  default=0)
    state = (f"last summary at global step {trained}"
             + (f" of {history.last_step}" if history.last_step else "")
             + (" (finished)" if history.last_step and trained >= history.last_step
                else " (in progress or stopped)" if history.last_step else ""))
    lines = [f"# Run report: {model_dir}", "",
             f"Written {now} from the TensorBoard event files in the model directory; {state}.", "",
             f"![curves]({picture_name})", "",
             "## Evaluations", ""]
    if history.evaluations:
        with_raw = any("raw_top_1" in row for row in history.evaluations)
        header = ["global step", "epoch", "top-1 %", "top-5 %"]
        header += ["raw top-1 %", "raw top-5 %"] if with_raw else []
        header += ["cross-entropy"] + (["raw cross-entropy"] if with_raw else []) + ["examples"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for row in history.evaluations:
            cells = [str(row["step"]),
                     f"{row['step'] / history.steps_per_epoch:.2f}" if history.steps_per_epoch
                     else "–", _percent(row, "top_1"), _percent(row, "top_5")]
            if with_raw:
                cells += [_percent(row, "raw_top_1"), _percent(row, "raw_top_5")]
            cells += [_figure(row, "cross_entropy")]
            if with_raw:
                cells += [_figure(row, "raw_cross_entropy")]
            cells += [str(int(row["examples"])) if "examples" in row else "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Top-1 and top-5 are of the Polyak averages of the weights (what the export "
                  "holds) where the checkpoint has them; \"raw\" columns are the raw weights, "
                  "evaluated on the same images in the same pass."]
    else:
        lines.append("No evaluation yet.")
    lines += ["", f"Reference: the paper's single-crop ImageNet validation accuracy is top-1 "
              f"{100 * PAPER_TOP_1:.1f} %, top-5 {100 * PAPER_TOP_5:.1f} %; Keras's published weights "
              f"reach {PAPER_TOP_1:.3f} / {PAPER_TOP_5:.3f}.", "", "## Provenance", ""]
    if history.records:
        count = len(history.records)
        lines.append(f"{count} record{'s' if count != 1 else ''} in "
                     f"{run_record.record_path(model_dir)} (one per start, resume or conversion), "
                     "oldest first:")
        lines.append("")
        for record in history.records:
            described = run_record.describe(record)
            lines.append(f"- {described[0]}")
            lines += [f"  {line.strip()}" for line in described[1:]]
    else:
        lines.append(f"No {provenance.RECORD_NAME} in the model directory.")
    return "\n".join(lines) + "\n"


def write_report(model_dir, output_dir=None):
    """Writes report.md and report.png into `output_dir` (default: `model_dir`); returns their
    paths."""
    output_dir = output_dir or model_dir
    history = read_history(model_dir)
    os.makedirs(output_dir, exist_ok=True)
    picture = os.path.join(output_dir, PICTURE_NAME)
    report = os.path.join(output_dir, REPORT_NAME)
    title = model_dir
    if history.records:
        title += "\n" + provenance.describe_environment(history.records[-1])
    draw(history, picture, title)
    text = markdown(history, model_dir, os.path.relpath(picture, output_dir))

    def write_text(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    _write_atomically(report, write_text)
    return report, picture


def define_flags():
    flags.DEFINE_string("model_dir", None, "The --model_dir of an imagenet_main run (in progress or "
                        "finished; a multi-worker run's shared directory).")
    flags.DEFINE_string("output_dir", None, "Where report.md and report.png go; default: "
                        "--model_dir.")
    flags.mark_flag_as_required("model_dir")


def main(argv):
    del argv
    logging_setup.log_through_absl_only()
    # TensorBoard's reader logs every file it polls, and warns of the graphs every run writes.
    std_logging.getLogger("tensorboard").setLevel(std_logging.ERROR)
    try:
        report, picture = write_report(flags.FLAGS.model_dir, flags.FLAGS.output_dir)
    except PipelineError as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot write the report ({error}): check --output_dir")
    print(f"report: {report}")
    print(f"picture: {picture}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
