"""The Xception recipe's absl flag groups: data, model, optimization and augmentation, and define_all,
which adds the shared groups of official/utils/flags_core.py.

Flag names follow tensorflow/models' official resnet where the concept is the same.
"""

from absl import flags

from official.utils import flags_core
from official.xception import model_fn
from official.xception.xception_model import MIN_IMAGE_SIZE

# The recipe of the paper (see docs/DESIGN.md §6).
PAPER_LEARNING_RATE = 0.045
# The paper does not state its batch size. 0.045 is taken to refer to a global batch of 256 (the usual
# reference for linear scaling, Goyal et al.); the rate actually used is scaled to --batch_size.
REFERENCE_BATCH_SIZE = 256
IMAGENET_TRAIN_EXAMPLES = 1281167
IMAGENET_EVAL_EXAMPLES = 50000
# Far above any input Xception is trained at (299; 448-512 for fine-tuning), far below one whose
# activations need more memory than any accelerator has (100000 fails only after minutes).
MAX_IMAGE_SIZE = 2048


def define_data(flag_values=flags.FLAGS):
    flags.DEFINE_integer("train_examples", IMAGENET_TRAIN_EXAMPLES, "Images in one training epoch.",
                         flag_values=flag_values)
    flags.DEFINE_integer("eval_examples", IMAGENET_EVAL_EXAMPLES, "Images in the validation set; "
                         "evaluation warns when it counts a different number.",
                         flag_values=flag_values)
    flags.DEFINE_boolean("allow_incomplete_shards", False, "Train and evaluate on the shards "
                         "present in --data_dir even when some of their set are missing (e.g. 10 "
                         "of train-*-of-01024); without it that is an error.",
                         flag_values=flag_values)
    flags.DEFINE_integer("shuffle_buffer", 10000, "Records in the training shuffle buffer.",
                         flag_values=flag_values)
    flags.DEFINE_boolean("skip_corrupt_records", False, "Leave out records whose bytes do not read "
                         "or whose image does not decode, instead of stopping (a shard's unreadable "
                         "bytes end that shard); each evaluation logs how many were left out. Off "
                         "by default: find bad shards with official.xception.verify_shards.",
                         flag_values=flag_values)
    flags_core.set_ranges({"train_examples": flags_core.AT_LEAST_1,
                           "eval_examples": flags_core.AT_LEAST_1,
                           "shuffle_buffer": flags_core.AT_LEAST_1})


def define_model(flag_values=flags.FLAGS):
    flags.DEFINE_integer("image_size", 299, "Square input side in pixels (at least 71).",
                         flag_values=flag_values)
    flags.DEFINE_integer("num_classes", 1000, "Logits of the classifier: 1000 with --label_offset=1 "
                         "for the established 1..1000 labels, or 1001 with --label_offset=0.",
                         flag_values=flag_values)
    flags.DEFINE_integer("label_offset", 1, "Subtracted from each record's image/class/label.",
                         flag_values=flag_values)
    flags.DEFINE_float("dropout_rate", 0.5, "Dropout before the classifier during training.",
                       flag_values=flag_values)
    flags.DEFINE_float("batch_norm_momentum", 0.99, "Decay of the batch-norm moving statistics "
                       "that evaluation uses (Keras's 0.99; lower, e.g. 0.9, for runs of a few "
                       "hundred steps).", flag_values=flag_values)
    flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the cross-entropy (e.g. 0.1).",
                       flag_values=flag_values)
    flags.DEFINE_float("weight_decay", 1e-5, "L2 weight decay: the loss gets weight_decay * "
                       "tf.nn.l2_loss(w) = weight_decay * sum(w^2) / 2 summed over the kernels of "
                       "conv, separable-conv and dense layers (not batch norm, not biases).",
                       flag_values=flag_values)
    flags.DEFINE_boolean("decay_biases", False, "Also apply --weight_decay to biases.",
                         flag_values=flag_values)
    flags.DEFINE_string("pretrained_model_checkpoint_path", None, "Checkpoint (directory or prefix) "
                        "to warm start from, e.g. converted Keras weights; the head is skipped when "
                        "--num_classes differs. Ignored once --model_dir has its own checkpoint.",
                        flag_values=flag_values)
    flags.DEFINE_float("pretrained_learning_rate_multiplier", 1.0, "Full fine-tuning from "
                       "--pretrained_model_checkpoint_path: learning rate of the pretrained layers "
                       "relative to the new head (e.g. 0.1); momentum/nesterov only.",
                       flag_values=flag_values)
    flags.DEFINE_boolean("fine_tune", False, "Train only the head (layer 'predictions'); batch "
                         "norm below it stays frozen.", flag_values=flag_values)
    flags_core.set_ranges({
        "image_size": flags_core.Range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        "num_classes": flags_core.AT_LEAST_1, "label_offset": flags_core.AT_LEAST_0,
        "dropout_rate": flags_core.Range(0, 1, high_open=True),
        "batch_norm_momentum": flags_core.FRACTION,
        "label_smoothing": flags_core.Range(0, 1, high_open=True),
        "weight_decay": flags_core.AT_LEAST_0,
        "pretrained_learning_rate_multiplier": flags_core.AT_LEAST_0})


def define_optimization(flag_values=flags.FLAGS):
    flags.DEFINE_enum("optimizer", "momentum", list(model_fn.OPTIMIZERS), "Optimizer.",
                      flag_values=flag_values)
    flags.DEFINE_float("momentum", 0.9, "Momentum of momentum/nesterov, and of rmsprop.",
                       flag_values=flag_values)
    flags.DEFINE_float("base_learning_rate", PAPER_LEARNING_RATE, "Learning rate for a global batch "
                       "of --base_batch_size; scaled linearly to --batch_size.",
                       flag_values=flag_values)
    flags.DEFINE_integer("base_batch_size", REFERENCE_BATCH_SIZE, "Global batch size that "
                         "--base_learning_rate refers to.", flag_values=flag_values)
    flags.DEFINE_enum("learning_rate_schedule", "exponential", list(model_fn.LEARNING_RATE_SCHEDULES),
                      "exponential: the paper's x0.94 every 2 epochs (staircase); piecewise: x"
                      "--lr_boundary_decay at each of --lr_boundary_epochs; cosine: to 0 at "
                      "--train_epochs.", flag_values=flag_values)
    flags.DEFINE_float("lr_decay_rate", 0.94, "Factor of the exponential schedule.",
                       flag_values=flag_values)
    flags.DEFINE_float("lr_decay_epochs", 2.0, "Epochs between steps of the exponential schedule.",
                       flag_values=flag_values)
    flags.DEFINE_list("lr_boundary_epochs", ["30", "60", "80"], "Epochs where the piecewise "
                      "schedule steps down.", flag_values=flag_values)
    flags.DEFINE_float("lr_boundary_decay", 0.1, "Factor at each piecewise boundary.",
                       flag_values=flag_values)
    flags.DEFINE_float("warmup_epochs", 0.0, "Linear warm-up from 0 over this many epochs "
                       "(5 for large batches, Goyal et al.).", flag_values=flag_values)
    flags.DEFINE_float("moving_average_decay", 0.9999, "Polyak averaging of the weights; evaluation "
                       "uses the averages. 0 turns it off.", flag_values=flag_values)
    flags.DEFINE_boolean("average_batch_norm_statistics", False, "The Polyak averages also cover "
                         "batch norm's moving mean and variance (as TensorFlow's Inception trainer "
                         "does; evaluation was worse with them on a short run); evaluation and "
                         "export use them wherever the checkpoint has them.",
                         flag_values=flag_values)
    flags.DEFINE_boolean("eval_raw_weights", True, "Evaluation also reports the raw weights (metrics "
                         "under raw_weights/) beside their Polyak averages, in the same pass over "
                         "the data; --noeval_raw_weights saves that second forward pass.",
                         flag_values=flag_values)
    flags_core.set_ranges({
        "momentum": flags_core.Range(0, 1, high_open=True),
        "base_learning_rate": flags_core.POSITIVE, "base_batch_size": flags_core.AT_LEAST_1,
        "lr_decay_rate": flags_core.Range(0, 1, low_open=True),
        "lr_decay_epochs": flags_core.POSITIVE,
        "lr_boundary_decay": flags_core.Range(0, 1, low_open=True),
        "warmup_epochs": flags_core.AT_LEAST_0,
        "moving_average_decay": flags_core.Range(0, 1, high_open=True)})


def define_augmentation(flag_values=flags.FLAGS):
    """Preprocessing; the defaults are the Inception recipe used for ImageNet."""
    flags.DEFINE_list("crop_area_range", ["0.05", "1.0"], "Training crop: min,max fraction of the "
                      "image area.", flag_values=flag_values)
    flags.DEFINE_list("crop_aspect_ratio_range", ["0.75", "1.3333333"], "Training crop: min,max "
                      "width/height.", flag_values=flag_values)
    flags.DEFINE_float("min_object_covered", 0.1, "Training crop: fraction of a bounding box the "
                       "crop must cover.", flag_values=flag_values)
    flags.DEFINE_boolean("random_flip", True, "Training: random horizontal flips.",
                         flag_values=flag_values)
    flags.DEFINE_boolean("color_distortion", True, "Training: Inception color distortion "
                         "(brightness, saturation, hue, contrast); --nocolor_distortion turns it "
                         "off.", flag_values=flag_values)
    flags.DEFINE_float("eval_central_fraction", 0.875, "Evaluation and serving: central crop "
                       "fraction of each side before the resize.", flag_values=flag_values)
    flags_core.set_ranges({"min_object_covered": flags_core.FRACTION})


def define_all(flag_values=flags.FLAGS):
    """Defines every flag of imagenet_main into `flag_values` (tests pass their own FlagValues)."""
    for define in (flags_core.define_base, define_data, define_model, define_optimization,
                   flags_core.define_performance, flags_core.define_distribution,
                   define_augmentation, flags_core.define_export):
        define(flag_values)
