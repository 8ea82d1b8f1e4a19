"""The image scenario of `make eval`: simulated users of the UCI digits, every method scored per user.

The UCI digits (scikit-learn) split into simulated users with Dirichlet label
skew, each user's own held-out test set, and every method scored on it.

Board methods (pretrained, AutLearn offline with/without augmentation, AutLearn online) go through the real
daemon code (tools/eval_board.py). The Keras baselines (local only, centralised, FedAvg) use the builder's own
architecture (autlearn_build.image_model) in full TensorFlow, as a user of those approaches would.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval_board import open_board, prequential_curve, set_arrival_order
from partition import dirichlet_partition, label_skew, train_test_split_user


@dataclass
class ImageUsers:
    x: np.ndarray  # every UCI digit as the board's input: float32 [N, 28, 28, 1]
    labels: np.ndarray  # int [N]
    files: list[Path]  # the PNG file of every digit (8x8 → 28x28 bilinear, as tools/userdata.py writes them)
    users: list[dict] = field(default_factory=list)  # name, train (indices in stream order), test (indices)
    alpha: float = 0.5
    skew: float = 0.0


def load_users(work: Path, input_spec: dict, n_users: int, alpha: float, test_fraction: float, seed: int,
               limit: int | None = None, min_size: int = 20) -> ImageUsers:
    """Digits → PNG files (once) → board inputs; Dirichlet(alpha) partition into `n_users`; per-user split."""
    from reference import decode_pngs
    from userdata import digits, write_png

    images, labels = digits(seed)
    if limit:
        images, labels = images[:limit], labels[:limit]
    pngs = work / f"digits-s{seed}"
    files = [pngs / f"d{i:05d}.png" for i in range(len(images))]
    if not all(f.exists() for f in files):
        shutil.rmtree(pngs, ignore_errors=True)
        for img, f in zip(images, files):
            write_png(img, f)
    x = decode_pngs(files, input_spec)  # the board's own preprocessing (autlearn.intake.imaging, the bundle's input spec)
    parts = dirichlet_partition(labels, n_users, alpha, seed, min_size=min_size)
    out = ImageUsers(x, labels.astype(np.int64), files, alpha=alpha, skew=label_skew(labels, parts))
    for u, idx in enumerate(parts):
        tr, te = train_test_split_user(idx, test_fraction, seed + 101 * (u + 1))
        stream = tr[np.random.default_rng(seed + 7 * (u + 1)).permutation(len(tr))]  # arrival order
        out.users.append({"name": f"user{u:02d}", "train": stream, "test": te,
                          "label_counts": np.bincount(labels[idx], minlength=10).tolist()})
    return out


# ------------------------------------------------------------------------------------------ board methods

def _write_inbox(board, data: ImageUsers, idx: np.ndarray, labels: np.ndarray | None = None) -> list[Path]:
    paths = []
    for j, i in enumerate(idx):
        lab = int(data.labels[i] if labels is None else labels[j])
        p = board.inbox / str(lab) / f"s{j:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data.files[i], p)
        paths.append(p)
    set_arrival_order(paths)
    return paths


def _head_predict(board, version: int, feats: np.ndarray) -> np.ndarray:
    """Labels (as ints) the board's head `version` predicts for `feats`."""
    lr = board.eng.learner
    head = lr.new_head()
    head.set_weights(lr.current_weights(version))
    probs = head.predict(feats, lr.active())
    names = {slot: name for name, slot in board.slots().items()}
    return np.array([int(names[int(s)]) for s in np.argmax(probs, axis=1)])


def board_user(data: ImageUsers, user: dict, bundle: Path, work: Path, epochs: int, augment_copies: int,
               train_labels: np.ndarray | None = None, extra_runs: tuple = ()) -> dict:
    """One user on the board: pretrained, offline without and with augmentation, online (plus `extra_runs`:
    (method name, config overrides)). Returns {method: accuracy on the user's test set} plus round details
    and the online accounting."""
    test_y = data.labels[user["test"]]
    res: dict = {"n_train": int(len(user["train"])), "n_test": int(len(user["test"]))}
    for method, overrides in (("autlearn_offline", {"training.augment_copies": 0}),
                              ("autlearn_offline_aug", {"training.augment_copies": augment_copies}),
                              ("autlearn_online", {"training.mode": "online"}), *extra_runs):
        b = open_board(work / f"{user['name']}-{method}", bundle,
                       **{"training.epochs": epochs, "training.seed": 0, **overrides})
        try:
            _write_inbox(b, data, user["train"], train_labels)
            b.scan()
            feats = b.eng.extractor(data.x[user["test"]])  # the board's int8 base (FeatureExtractor)
            if method == "autlearn_offline":
                res["pretrained"] = float(np.mean(_head_predict(b, b.initial_version(), feats) == test_y))
            if method == "autlearn_online":  # the stream the board will learn from, predicted without learning
                stream = [s for s in b.eng.store.usable_samples() if not s.holdout]
                sf, kept, _, _ = b.eng.features.for_samples(stream)
                pre = _head_predict(b, b.initial_version(), sf)
                truth = np.array([int(s.label) for s in kept])
                bt = b.eng.bundle.train_batch
                res["pretrained_stream"] = prequential_curve(
                    [(int(np.sum(pre[i:i + bt] == truth[i:i + bt])), len(truth[i:i + bt]))
                     for i in range(0, len(truth), bt)])
            r = b.round()
            res[method] = float(np.mean(_head_predict(b, b.version(), feats) == test_y))
            res[method + "_round"] = {"outcome": r.outcome, "n_train": r.n_train, "n_holdout": r.n_holdout,
                                      "n_augmented": r.n_augmented, "holdout_before": r.accuracy_before,
                                      "holdout_after": r.accuracy_after}
            if method == "autlearn_online":
                res["online_prequential"] = prequential_curve(r.prequential or [])
        finally:
            b.close()
    return res


# ------------------------------------------------------------------------------------------ Keras baselines

def _keras_model(manifest: dict, seed: int, input_shape: tuple = (28, 28, 1), feature_size: int | None = None):
    from autlearn_build import image_model

    image_model.set_seed(seed)
    base = image_model.build_base(tuple(input_shape), feature_size or int(manifest["variants"][0]["feature_size"]), 1.0)
    return image_model.build_classifier(base, int(manifest["class_capacity"]), len(manifest["labels"]))


def _keras_predict(model, x: np.ndarray) -> np.ndarray:
    return np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)


def local_only(data: ImageUsers, manifest: dict, epochs: int, seed: int, train_labels=None,
               feature_size: int | None = None) -> list[float]:
    """The bundle's architecture (the builder's small CNN at the inputs' size; `feature_size` overrides the
    bundle's) trained from scratch on one user's training images alone (builder's recipe: Adam, cosine decay,
    batch 32, BatchNorm recalibrated)."""
    from autlearn_build import image_model

    accs = []
    shape = data.x.shape[1:]
    for u in data.users:
        y = data.labels[u["train"]] if train_labels is None else train_labels[u["name"]]
        model = _keras_model(manifest, seed, shape, feature_size)
        image_model.pretrain(model, data.x[u["train"]], y, np.zeros((0, *shape), np.float32),
                             np.zeros(0, np.int64), epochs=epochs, batch_size=32, progress=lambda s: None)
        accs.append(float(np.mean(_keras_predict(model, data.x[u["test"]]) == data.labels[u["test"]])))
    return accs


def public_train(manifest: dict):
    """The builder's public training images (MNIST-5k, its fixed order and per-class split), with the copies the
    bundle's base was pretrained on (manifest build.public_augmentation: --degrade, --augment-public), so that
    centralised training gets the same public data as the cloud model."""
    from reference import public_sets

    aug = manifest.get("build", {}).get("public_augmentation") or {"degrade": 0, "augment_public": 0, "augment_ops": []}
    _, train, _ = public_sets(manifest, float(aug["degrade"]), int(aug["augment_public"]), tuple(aug["augment_ops"]),
                              int(manifest.get("build", {}).get("seed", 0)))
    return train.x, train.y


def centralised(data: ImageUsers, manifest: dict, epochs: int, seed: int) -> tuple[list[float], dict]:
    """Public training images + every user's training images pooled, same architecture, from scratch,
    the builder's recipe and epochs."""
    from autlearn_build import image_model

    px, py = public_train(manifest)
    ux = np.concatenate([data.x[u["train"]] for u in data.users])
    uy = np.concatenate([data.labels[u["train"]] for u in data.users])
    model = _keras_model(manifest, seed)
    t0 = time.monotonic()
    image_model.pretrain(model, np.concatenate([px, ux]), np.concatenate([py, uy]),
                         np.zeros((0, 28, 28, 1), np.float32), np.zeros(0, np.int64), epochs=epochs, batch_size=32,
                         progress=lambda s: None)
    info = {"public_images": int(len(px)), "user_images": int(len(ux)), "epochs": epochs,
            "public_augmentation": manifest.get("build", {}).get("public_augmentation"),
            "sample_gradients": int(epochs * (len(px) + len(ux))), "seconds": round(time.monotonic() - t0, 1)}
    return [float(np.mean(_keras_predict(model, data.x[u["test"]]) == data.labels[u["test"]]))
            for u in data.users], info


def fedavg(data: ImageUsers, pretrained_model, pretrained_weights, rounds: int, clients: int, local_epochs: int,
           lr: float, seed: int) -> tuple[list[float], dict]:
    """FedAvg (McMahan et al. 2017) from the cloud's pretrained model: each round `clients` users drawn
    without replacement, each trains the whole model `local_epochs` epochs (SGD, batch 32) on its own
    training images, and the server averages the weights (by sample count)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    model = pretrained_model
    model.set_weights(pretrained_weights)
    model.compile(optimizer=tf.keras.optimizers.SGD(lr),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    glob = [np.array(w) for w in model.get_weights()]
    t0 = time.monotonic()
    grads = 0
    for _ in range(rounds):
        chosen = rng.choice(len(data.users), size=min(clients, len(data.users)), replace=False)
        acc_w, total = None, 0
        for c in chosen:
            u = data.users[int(c)]
            model.set_weights(glob)
            model.fit(data.x[u["train"]], data.labels[u["train"]], batch_size=32, epochs=local_epochs,
                      shuffle=True, verbose=0)
            n = len(u["train"])
            grads += n * local_epochs
            w = model.get_weights()
            acc_w = [a * n for a in w] if acc_w is None else [a + b * n for a, b in zip(acc_w, w)]
            total += n
        glob = [a / total for a in acc_w]
    model.set_weights(glob)
    info = {"rounds": rounds, "clients_per_round": clients, "users": len(data.users), "local_epochs": local_epochs,
            "optimizer": f"SGD lr {lr}, batch 32", "start": "the cloud's pretrained model (public data)",
            "sample_gradients": int(grads), "seconds": round(time.monotonic() - t0, 1)}
    return [float(np.mean(_keras_predict(model, data.x[u["test"]]) == data.labels[u["test"]]))
            for u in data.users], info
