"""The keyboard pipeline: public text → pretrained LSTM → int8 base + trainable head → bundle.

The keyboard pipeline: public text → word tokenizer + vocabulary → pretrain embedding + LSTM + softmax →
int8 base (converted in a child process) + builtin-only softmax head with spare slots → synonym table →
measure top-1/top-3 next-word accuracy on held-out documents → bundle (task `next_word`)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from . import text_data as td
from .build_steps import (BuildResult, active_mask, build_record, chief_copy, latency_record, prepare, quiet_call,
                          write_verified)
from .bundle_writer import Variant, metric
from .errors import InputError
from .text_options import TextOptions

TASK = "next_word"
VARIANT_NAME = "full"
SYNONYM_FILE = "synonyms.json"
LATENCY_BATCH = 32
PREPROCESSING_VERSION = 1


def _hits(scores: np.ndarray, targets: np.ndarray, excluded: list[int]) -> tuple[int, int]:
    scores = np.array(scores, dtype=np.float32, copy=True)
    scores[:, excluded] = -np.inf
    top3 = np.argpartition(-scores, 2, axis=1)[:, :3]
    return int(np.sum(np.argmax(scores, axis=1) == targets)), int(np.sum(np.any(top3 == targets[:, None], axis=1)))


def check_unknown(unk_rate: float, limit: float, corpus: td.TextCorpus, val_docs: list[td.Document]) -> None:
    """A bundle whose own held-out words are mostly <unk> would suggest nothing useful: refuse it, say why."""
    if not unk_rate > limit:
        return
    sample = " ".join(w for d in val_docs[:3] for s in d.sentences[:200] for w in s)
    if corpus.tokenizer == "word" and td.cjk_share(sample) >= 0.3:
        hint = ("the text is Chinese/Japanese, written without spaces, and the word tokenizer takes each run of "
                "characters as one word: build with --tokenizer cjk (or auto)")
    else:
        hint = "raise --vocab, or check that the training and held-out documents are in the same language"
    raise InputError(f"{unk_rate * 100:.1f}% of the held-out words are <unk> (the limit is --max-unk "
                     f"{limit:g}): {hint}")


def frequency_baseline(y_train: np.ndarray, y_val: np.ndarray) -> dict:
    """Top-1/top-3 of suggesting the training text's 3 most frequent words everywhere, on the held-out
    positions the metrics count (`td.word_targets`): what a model that ignores the context scores."""
    train = y_train[td.word_targets(y_train)]
    val = y_val[td.word_targets(y_val)]
    if not len(train) or not len(val):
        return {"top1": float("nan"), "top3": float("nan")}
    ids, counts = np.unique(train, return_counts=True)
    top = ids[np.lexsort((ids, -counts))][:3]
    return {"top1": float(np.mean(val == top[0])), "top3": float(np.mean(np.isin(val, top)))}


def context_warning(top1: float, baseline_top1: float, steps: int, margin: float = 0.01) -> str | None:
    """A model within `margin` of the frequency baseline has not learnt from context (an LSTM language model
    stays at that plateau for its first few hundred optimiser steps): say so and what to change."""
    if top1 != top1 or baseline_top1 != baseline_top1 or top1 > baseline_top1 + margin:
        return None
    return (f"WARNING: top-1 {top1 * 100:.2f}% is not above the frequency baseline {baseline_top1 * 100:.2f}% "
            f"(the 3 most frequent training words suggested everywhere): the model has not learnt from the context "
            f"in {steps} optimiser steps; raise --epochs or --limit, or lower --batch-size")


def build_text_bundle(opts: TextOptions, progress: Callable[[str], None] = print) -> BuildResult:
    start = time.perf_counter()
    out = prepare(opts)
    from .distribute import make_distribution

    dist = make_distribution(opts.strategy)

    progress(f"loading {opts.data} …")
    corpus = td.load_corpus(opts.data, opts.tokenizer)
    train_docs, val_docs = td.split_documents(corpus, opts.val_fraction)
    vocabulary = td.build_vocabulary(train_docs, opts.vocab)
    n_vocab = len(vocabulary)
    capacity = n_vocab + opts.spare_slots
    val_limit = None if opts.limit is None else max(opts.limit // 5, 10 * opts.seq_len)
    train_stream = td.token_stream(train_docs, vocabulary, opts.limit)
    val_stream = td.token_stream(val_docs, vocabulary, val_limit)
    x_train, y_train = td.windows(train_stream, opts.seq_len)
    x_val, y_val = td.windows(val_stream, opts.seq_len)
    if len(x_train) < 2:
        raise InputError(f"too little training text: {len(train_stream)} tokens give fewer than 2 sequences of "
                         f"{opts.seq_len} (raise --limit or add text)")
    w_train, w_val = td.target_weights(y_train), td.target_weights(y_val)
    unk_rate = float(np.mean(val_stream == td.UNK_ID)) if len(val_stream) else float("nan")
    progress(f"  {len(corpus.documents)} documents ({sum(d.n_words for d in corpus.documents)} tokens, "
             f"tokenizer {corpus.tokenizer}); held out: {', '.join(d.name for d in val_docs)}")
    words = val_stream[(val_stream != td.BOS_ID) & (val_stream != td.EOS_ID) & (val_stream != td.PAD_ID)]
    check_unknown(float(np.mean(words == td.UNK_ID)) if len(words) else 0.0, opts.max_unk, corpus, val_docs)
    progress(f"  vocabulary {n_vocab} tokens (4 special + {n_vocab - 4} words), {opts.spare_slots} spare slots; "
             f"{len(train_stream)} training / {len(val_stream)} held-out tokens; <unk> {unk_rate * 100:.1f}% of "
             f"held-out tokens")

    from . import text_model
    from .image_model import set_seed

    set_seed(opts.seed)

    def make_classifier_of(hidden: int):
        base = text_model.build_text_base(n_vocab, opts.seq_len, opts.embed, hidden)
        return text_model.build_text_classifier(base, capacity, n_vocab)

    def make_classifier():
        return make_classifier_of(opts.hidden)

    with dist.scope():
        classifier = make_classifier()
    cost = text_model.text_base_cost(n_vocab, opts.seq_len, opts.embed, opts.hidden)
    progress(f"pretraining embedding {opts.embed} + LSTM {opts.hidden} + softmax {capacity} "
             f"({cost['params']} base params, {cost['flops'] / 1e6:.2f} MFLOPs per sequence of {opts.seq_len}) "
             f"for {opts.epochs} epoch(s), strategy {dist.name} ({dist.replicas} replica(s), {dist.task})")
    pre = text_model.pretrain_text(classifier, x_train, y_train, w_train, x_val, y_val, w_val, epochs=opts.epochs,
                                   batch_size=opts.batch_size, learning_rate=opts.learning_rate,
                                   progress=progress, strategy=dist.strategy)
    classifier = chief_copy(dist, classifier, make_classifier, progress)
    if classifier is None:
        return BuildResult(None, {}, time.perf_counter() - start, pre.seconds, len(train_stream), len(val_stream))

    rng = np.random.default_rng(opts.seed)
    data = (x_train, y_train, w_train, x_val, y_val, w_val)
    variant, metrics = _finish(VARIANT_NAME, classifier, opts.hidden, data, n_vocab, capacity, opts, rng, progress)
    variants = [variant]
    pruning = None
    prune_seconds = 0.0
    if opts.hidden_widths:
        t_prune = time.perf_counter()
        pruned, pruning = _pruned_variants(classifier, make_classifier_of, data, n_vocab, capacity, opts, rng,
                                           progress)
        variants += pruned
        for v in variants:  # what the budget compares, per token (the manifest's latency_ms is per sequence)
            v.extra["latency_ms_per_token"] = round(v.latency_ms / opts.seq_len, 5)
        prune_seconds = time.perf_counter() - t_prune
    baseline = frequency_baseline(y_train, y_val)
    steps = opts.epochs * int(np.ceil(len(x_train) / opts.batch_size))
    progress(f"  frequency baseline (the 3 most frequent training words): top-1 {_pct(baseline['top1'])}, top-3 "
             f"{_pct(baseline['top3'])}")
    warning = context_warning(metrics["top1_float"], baseline["top1"], steps)
    if warning:
        progress(warning)

    from .synonyms import synonym_file, synonym_table, synonym_vectors

    vectors = synonym_vectors(text_model.embedding_matrix(classifier), classifier.get_layer("softmax").get_weights()[0],
                              opts.synonym_source, len(td.SPECIALS), n_vocab)
    table = synonym_table(vectors, vocabulary, len(td.SPECIALS), opts.synonym_threshold, opts.synonyms_per_word)
    synonyms = synonym_file(table, opts.synonym_threshold, opts.synonyms_per_word, opts.synonym_source)
    n_pairs = sum(len(v) for v in table.values())
    example = next(iter(sorted(table.items(), key=lambda kv: -kv[1][0][1])), None)
    progress(f"  synonym table: {len(table)} words with {n_pairs} synonyms at cosine ≥ {opts.synonym_threshold}"
             + (f" (e.g. {example[0]} → {', '.join(w for w, _ in example[1][:3])})" if example else ""))

    fields = {
        "vocabulary": vocabulary,
        "tokenizer": td.tokenizer_manifest(corpus.tokenizer),
        "seq_len": opts.seq_len,
        "spare_slots": opts.spare_slots,
        "synonyms": {"file": SYNONYM_FILE, "source": opts.synonym_source, "threshold": opts.synonym_threshold,
                     "max_per_word": opts.synonyms_per_word, "words": len(table), "pairs": n_pairs},
        "metrics": {
            "held_out_documents": [d.name for d in val_docs],
            "positions": metrics["positions"],
            "top1_float": metric(metrics["top1_float"]), "top1_int8": metric(metrics["top1_int8"]),
            "top3_float": metric(metrics["top3_float"]), "top3_int8": metric(metrics["top3_int8"]),
            "unk_rate": metric(unk_rate),
            "frequency_top1": metric(baseline["top1"]), "frequency_top3": metric(baseline["top3"]),
            "pretrain_steps": steps,
            "definition": "next-word accuracy on the held-out documents at every position whose next token is a "
                          "vocabulary word (targets <unk>, <bos>, <eos>, <pad> not counted); predictions among "
                          "vocabulary words (special tokens inactive), int8 = int8 base + converted head",
        },
    }
    input_spec = {"kind": "tokens", "dtype": "int32", "seq_len": opts.seq_len, "pad_id": td.PAD_ID,
                  "features": "per_position", "preprocessing_version": PREPROCESSING_VERSION}
    build = build_record(
        opts, corpus.description, documents=len(corpus.documents), train_tokens=int(len(train_stream)),
        val_tokens=int(len(val_stream)), limit=opts.limit, epochs=opts.epochs, embed=opts.embed, hidden=opts.hidden,
        batch_size=opts.batch_size, pretrain_seconds=round(pre.seconds, 2), pretrain_loss=metric(pre.train_loss),
        val_loss=metric(pre.val_loss), head_epochs=opts.head_epochs, distribution=dist.describe(),
        latency=latency_record(2, LATENCY_BATCH, f"sequence of {opts.seq_len} tokens"),
        **({"pruning": pruning} if pruning else {}))
    manifest = write_verified(out, opts, task=TASK, input_spec=input_spec, labels=vocabulary, class_capacity=capacity,
                              variants=variants, build=build, extra_files={SYNONYM_FILE: synonyms}, fields=fields)
    return BuildResult(out, manifest, time.perf_counter() - start, pre.seconds, len(train_stream), len(val_stream),
                       prune_seconds=prune_seconds)


def _finish(name: str, classifier, hidden: int, data: tuple, n_vocab: int, capacity: int, opts: TextOptions,
            rng: np.random.Generator, progress: Callable[[str], None]) -> tuple[Variant, dict]:
    """A pretrained (or pruned) classifier of `hidden` units as a bundle variant: int8 base (converted in a child
    process, builtin-only), its softmax head (trained on the int8 features with --head-epochs), measured on the
    held-out text (top-1/top-3, latency per sequence and per token, bytes)."""
    from . import text_model
    from .convert import convert_head, convert_int8_in_subprocess
    from .evaluate import BaseRunner
    from .head_module import SIGNATURES, SOFTMAX_WEIGHT_NAMES, SoftmaxHead, train_head

    x_train, y_train, w_train, x_val, y_val, _ = data
    cost = text_model.text_base_cost(n_vocab, opts.seq_len, opts.embed, hidden)
    base = text_model.text_base_of(classifier)
    progress(f"converting the base{'' if name == VARIANT_NAME else f' of variant {name}'} to int8 (in a child "
             f"process) …")
    t0 = time.perf_counter()
    calibration = x_train[rng.permutation(len(x_train))[:200]]
    base_model = convert_int8_in_subprocess(base, calibration, f"LSTM base ({name})")
    runner = BaseRunner(base_model, batch=LATENCY_BATCH)
    latency = runner.latency_ms(x_val if len(x_val) else x_train)
    progress(f"  int8 base {len(base_model)} bytes, {latency:.4f} ms per sequence  {time.perf_counter() - t0:.1f}s")

    active = active_mask(capacity, n_vocab)
    weights = text_model.softmax_weights(classifier, n_vocab)
    if opts.head_epochs > 0:
        pos = np.flatnonzero(w_train.reshape(-1) > 0)
        rows = np.unique(pos[rng.permutation(len(pos))[:opts.head_positions]] // opts.seq_len)
        feats = runner.features(x_train[rows]).reshape(-1, hidden)
        targets = y_train[rows].reshape(-1)
        keep = w_train[rows].reshape(-1) > 0
        progress(f"training the head {opts.head_epochs} epoch(s) on {int(keep.sum())} int8 feature positions …")
        weights = train_head(SoftmaxHead(weights, opts.train_batch), feats[keep], targets[keep].astype(np.int32),
                             active, epochs=opts.head_epochs, lr=opts.head_learning_rate, seed=opts.seed)
    head = SoftmaxHead(weights, opts.train_batch)
    progress("converting the softmax head (builtin operators only) …")
    head_model = quiet_call(convert_head, head, SIGNATURES)

    progress("measuring next-word accuracy on the held-out documents …")
    t0 = time.perf_counter()
    metrics = _evaluate(classifier, runner, head_model, x_val, y_val, active, hidden)
    progress(f"  top-1 float {_pct(metrics['top1_float'])}, int8 {_pct(metrics['top1_int8'])}; top-3 float "
             f"{_pct(metrics['top3_float'])}, int8 {_pct(metrics['top3_int8'])} over {metrics['positions']} "
             f"word positions  {time.perf_counter() - t0:.1f}s")
    head_params = int(weights["w0"].size + weights["b0"].size)
    variant = Variant(name=name, base_model=base_model, head_model=head_model,
                      head_weights=list(SOFTMAX_WEIGHT_NAMES), feature_size=hidden, params=cost["params"],
                      flops=cost["flops"], latency_ms=latency, accuracy_int8=metrics["top1_int8"],
                      accuracy_float=metrics["top1_float"],
                      extra={"top3_int8": metric(metrics["top3_int8"]), "top3_float": metric(metrics["top3_float"]),
                             "features": "per_position", "head_params": head_params,
                             "head_flops": int(2 * weights["w0"].size)})
    return variant, metrics


def _pruned_variants(classifier, make_classifier_of, data: tuple, n_vocab: int, capacity: int, opts: TextOptions,
                     rng: np.random.Generator, progress: Callable[[str], None]) -> tuple[list[Variant], dict]:
    """One variant per --hidden-widths entry (text_prune: ranking, kept weights copied, fine-tuned); the record."""
    from . import text_prune
    from .image_model import set_seed

    x_train, y_train, w_train, x_val, y_val, w_val = data
    out, record = [], {"ranking": text_prune.RANKING, "from_hidden": opts.hidden, "finetune_epochs": opts.prune_finetune,
                       "variants": {}}
    for width in sorted(opts.hidden_widths, reverse=True):
        name = text_prune.variant_name(width)
        t0 = time.perf_counter()
        set_seed(opts.seed + width)
        keep = text_prune.kept_units(classifier, width)
        small = text_prune.prune_classifier(classifier, keep, make_classifier_of)
        progress(f"variant {name}: LSTM {opts.hidden} → {width} units kept by importance; fine-tuning "
                 f"{opts.prune_finetune:g} epoch(s) on the public text …")
        tuned = text_prune.finetune(small, x_train, y_train, w_train, x_val, y_val, w_val, epochs=opts.prune_finetune,
                                    batch_size=opts.batch_size, learning_rate=opts.learning_rate,
                                    seed=opts.seed + width, progress=progress)
        variant, _ = _finish(name, small, width, data, n_vocab, capacity, opts, rng, progress)
        variant.extra["pruned_from"] = VARIANT_NAME
        out.append(variant)
        record["variants"][name] = {"hidden": width, "finetune": tuned, "seconds": round(time.perf_counter() - t0, 2)}
    return out, record


def _evaluate(classifier, runner, head_model: bytes, x_val: np.ndarray, y_val: np.ndarray, active: np.ndarray,
              hidden: int, chunk: int = 128) -> dict:
    """Top-1/top-3 of the float classifier and of int8 base + converted head (its `infer` top_ids)."""
    import tensorflow as tf

    from .evaluate import _interpreter

    excluded = list(range(len(td.SPECIALS)))
    active_words = active.copy()
    active_words[excluded] = 0.0
    infer = _interpreter(head_model).get_signature_runner("infer")
    f1 = f3 = q1 = q3 = n = 0
    for start in range(0, len(x_val), chunk):
        xb, yb = x_val[start:start + chunk], y_val[start:start + chunk].reshape(-1)
        counted = td.word_targets(yb)
        if not counted.any():
            continue
        logits = classifier(tf.constant(xb), training=False).numpy().reshape(-1, len(active))
        h1, h3 = _hits(logits[counted], yb[counted], excluded)
        f1, f3 = f1 + h1, f3 + h3
        feats = runner.features(xb).reshape(-1, hidden)[counted]
        top = infer(x=feats.astype(np.float32), active=active_words)["top_ids"]
        q1 += int(np.sum(top[:, 0] == yb[counted]))
        q3 += int(np.sum(np.any(top == yb[counted][:, None], axis=1)))
        n += int(counted.sum())
    nan = float("nan")
    return {"top1_float": f1 / n if n else nan, "top3_float": f3 / n if n else nan,
            "top1_int8": q1 / n if n else nan, "top3_int8": q3 / n if n else nan, "positions": n}


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value * 100:.2f}%"
