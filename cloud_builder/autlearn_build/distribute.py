"""TensorFlow distribution strategies for pretraining (`--strategy default|mirrored|multi-worker`).

* default: one device, no strategy.
* mirrored: `tf.distribute.MirroredStrategy` over this machine's GPUs (or its CPU when it has none);
  synchronous data-parallel training, `--batch-size` is the global batch.
* multi-worker: `tf.distribute.MultiWorkerMirroredStrategy`; every machine runs the same command with its
  own `TF_CONFIG` (cluster of `worker` [and `chief`] addresses, and this process's task). All workers
  pretrain together; only the chief (the `chief` task, or worker 0 when there is none) converts, measures
  and writes the bundle — the others stop after pretraining.

Only pretraining is distributed: the pruning search, conversion and measurement run on the chief alone,
on a local copy of the pretrained weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .errors import InputError

STRATEGIES = ("default", "mirrored", "multi-worker")


@dataclass
class Distribution:
    name: str
    strategy: object | None  # a tf.distribute.Strategy, or None for the default
    is_chief: bool
    task: str  # e.g. "worker 1", "local"
    replicas: int

    def scope(self):
        import contextlib

        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> dict:
        return {"strategy": self.name, "task": self.task, "replicas": self.replicas}


def parse_tf_config() -> dict:
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        raise InputError("--strategy multi-worker needs TF_CONFIG, e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                         '"index": 0}}')
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        members = cluster[kind]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"TF_CONFIG is not a valid cluster description: {exc}") from None
    if not isinstance(members, list) or not 0 <= index < len(members):
        raise InputError(f"TF_CONFIG: task {kind} {index} is not in the cluster")
    return config


def make_distribution(name: str) -> Distribution:
    """Create the strategy. Call before any other TensorFlow work (multi-worker requires it)."""
    if name not in STRATEGIES:
        raise InputError(f"--strategy must be one of {', '.join(STRATEGIES)}")
    if name == "default":
        return Distribution(name, None, True, "local", 1)
    if name == "multi-worker":
        config = parse_tf_config()
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return Distribution(name, strategy, True, "local", int(strategy.num_replicas_in_sync))
    kind, index = config["task"]["type"], int(config["task"]["index"])
    has_chief = bool(config["cluster"].get("chief"))
    is_chief = kind == "chief" or (kind == "worker" and index == 0 and not has_chief)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return Distribution(name, strategy, is_chief, f"{kind} {index}", int(strategy.num_replicas_in_sync))


def local_copy(model, factory):
    """A copy of `model` built outside any strategy (so that its later use involves no other worker)."""
    copy = factory()
    copy.set_weights(model.get_weights())
    return copy


def fit_distributed(model, x, y, sample_weight=None, *, strategy, epochs: int, batch_size: int,
                    learning_rate: float, seed: int, clipnorm: float | None = None,
                    progress=print) -> list[float]:
    """Synchronous data-parallel training of a Keras classifier (built in `strategy.scope()`) on integer
    targets with cross-entropy from logits: a custom loop (`strategy.run` per step), because Keras 3's `fit`
    does not work with MultiWorkerMirroredStrategy (keras-team/keras#20585).

    `batch_size` is the global batch; the last incomplete batch of an epoch is dropped so that every replica
    gets the same shape. Every worker must feed the same arrays in the same order (the shuffle is seeded);
    the dataset is sharded across workers by batch (AutoShardPolicy.DATA). Adam with cosine decay, as the
    single-device path. Returns the mean training loss of every epoch (identical on all workers)."""
    import time

    import numpy as np
    import tensorflow as tf

    n = len(x)
    steps = n // batch_size
    if steps < 1:
        raise InputError(f"distributed pretraining needs at least one full batch: {n} samples < --batch-size "
                         f"{batch_size}")
    weights = np.ones(y.shape, np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    with strategy.scope():
        schedule = tf.keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(epochs * steps, 1),
                                                             alpha=0.05)
        optimizer = tf.keras.optimizers.Adam(schedule, clipnorm=clipnorm)
        loss_obj = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    dataset = (tf.data.Dataset.from_tensor_slices((x, y, weights))
               .shuffle(n, seed=seed, reshuffle_each_iteration=True)
               .batch(batch_size, drop_remainder=True))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    distributed = strategy.experimental_distribute_dataset(dataset.with_options(options))
    per_example_size = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1

    @tf.function
    def train_step(batch):
        def replica_step(xb, yb, wb):
            with tf.GradientTape() as tape:
                per = loss_obj(yb, model(xb, training=True), sample_weight=wb)
                per = tf.reshape(per, [tf.shape(per)[0], -1])
                per_example = tf.reduce_sum(per, axis=1) / float(per_example_size)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return tf.reduce_sum(per), tf.reduce_sum(wb)

        total, count = strategy.run(replica_step, args=batch)
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None))

    from .progress import bar

    quarters = {int(steps * q) for q in (0.25, 0.5, 0.75)} if steps >= 200 else set()
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        total = count = 0.0
        for i, batch in enumerate(distributed):
            s, c = train_step(batch)
            total, count = total + float(s), count + float(c)
            if i + 1 in quarters:
                progress(f"  epoch {epoch + 1:>3}/{epochs} {bar((i + 1) / steps)}  loss {total / max(count, 1):.4f}  "
                         f"{time.perf_counter() - t0:.0f}s")
        history.append(total / max(count, 1.0))
        progress(f"  epoch {epoch + 1:>3}/{epochs}  loss {history[-1]:.4f}  {time.perf_counter() - t0:.1f}s")
    return history
