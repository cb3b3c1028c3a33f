"""Benchmark: one training step of a partly frozen embedding table, versus the size of the table.

Question answered: does a step of `FrozenTailEmbedding` cost the same at 100k and 4M rows, and how do the
known ways of freezing old rows compare? Every technique runs the same objective, a squared error
mean((E[r] . q - y)^2) of one table lookup against a fixed query vector per example, so the embedding step
(lookup, gradient, optimizer update) dominates. Each step is a `tf.function` (gradient + optimizer apply);
after a warm-up, steps are timed in a few repeats and the fastest repeat is reported (other processes share
this machine; the minimum is the least disturbed estimate). A technique whose warm-up step is too slow for the
time budget is run for fewer steps, or skipped, and the table says so.

Techniques:
  ours        FrozenTailEmbedding: frozen block + trainable tail, ids routed by dynamic_partition; Adagrad.
  concat      a layer that concatenates a frozen and a trainable variable at every step, then gathers; Adagrad.
  constraint  one fully trainable table + a weight constraint re-pinning the frozen rows after every step; Adam.
  switch      two embedding layers (frozen old, trainable new) and tf.where between two clipped lookups;
              Adagrad. (Its clipped ids feed zero-gradient rows to the optimizer: Adam would move them.)
  full        a fully trainable table (nothing frozen), Adam: the cost of not freezing at all.

Usage: python bench/embedding_step.py [--sizes 100k,1M,4M] [--dim 64] [--batch 8192] [--steps 60]
"""
from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np

from accrete import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
from accrete.models.embedding import FrozenTailEmbedding

TECHNIQUES = ("ours", "concat", "constraint", "switch", "full")
OPTIMIZER = {"ours": "adagrad", "concat": "adagrad", "constraint": "adam", "switch": "adagrad", "full": "adam"}
TARGET_EXAMPLES_PER_SECOND = 1_000_000
TARGET_SIZE_RATIO = 1.2
REPEATS = 5
DISTINCT_BATCHES = 8


class ConcatEmbedding(tf.keras.layers.Layer):
    """Known technique: table = concat(frozen, trainable) rebuilt at every step (O(table) per step)."""

    def __init__(self, table: np.ndarray, trainable_from: int):
        super().__init__()
        self.frozen = tf.Variable(table[:trainable_from], trainable=False)
        self.tail = tf.Variable(table[trainable_from:], trainable=True)

    def call(self, rows):
        return tf.gather(tf.concat([self.frozen, self.tail], axis=0), rows)


class PinRows(tf.keras.constraints.Constraint):
    """Known technique: after each optimizer step, overwrite rows [0, t) with their frozen values (O(table))."""

    def __init__(self, frozen_rows: np.ndarray):
        self.frozen = tf.Variable(frozen_rows, trainable=False)

    def __call__(self, table):
        return tf.concat([self.frozen, table[self.frozen.shape[0]:]], axis=0)


class SwitchEmbedding(tf.keras.layers.Layer):
    """Known technique: a frozen old layer, a trainable new layer, tf.where between two clipped lookups."""

    def __init__(self, table: np.ndarray, trainable_from: int):
        super().__init__()
        self.trainable_from = trainable_from
        old_rows, new_rows = table[:trainable_from], table[trainable_from:]
        self.old = tf.keras.layers.Embedding(len(old_rows), table.shape[1], trainable=False,
                                             embeddings_initializer=tf.keras.initializers.Constant(old_rows))
        self.new = tf.keras.layers.Embedding(len(new_rows), table.shape[1],
                                             embeddings_initializer=tf.keras.initializers.Constant(new_rows))

    def call(self, rows):
        t = self.trainable_from
        old = self.old(tf.minimum(rows, t - 1))
        new = self.new(tf.maximum(rows - t, 0))
        return tf.where((rows >= t)[:, None], new, old)


def build(technique: str, table: np.ndarray, trainable_from: int):
    """(layer, optimizer) of a technique over `table` with rows >= trainable_from trainable."""
    if technique == "ours":
        layer = FrozenTailEmbedding(table, trainable_from)
    elif technique == "concat":
        layer = ConcatEmbedding(table, trainable_from)
    elif technique == "constraint":
        layer = tf.keras.layers.Embedding(len(table), table.shape[1],
                                          embeddings_initializer=tf.keras.initializers.Constant(table),
                                          embeddings_constraint=PinRows(table[:trainable_from]))
    elif technique == "switch":
        layer = SwitchEmbedding(table, trainable_from)
    elif technique == "full":
        layer = tf.keras.layers.Embedding(len(table), table.shape[1],
                                          embeddings_initializer=tf.keras.initializers.Constant(table))
    else:
        raise ValueError(f"unknown technique {technique!r}; known: {TECHNIQUES}")
    optimizer = (tf.keras.optimizers.Adagrad(0.1) if OPTIMIZER[technique] == "adagrad"
                 else tf.keras.optimizers.Adam(0.001))
    return layer, optimizer


def make_step(layer, optimizer, queries: tf.Tensor, targets: tf.Tensor):
    """The timed unit: lookup, loss, gradient, optimizer apply (and constraint, if any), as one tf.function."""

    @tf.function
    def step(rows):
        with tf.GradientTape() as tape:
            looked_up = layer(rows)
            loss = tf.reduce_mean(tf.square(tf.reduce_sum(looked_up * queries, axis=1) - targets))
        variables = layer.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


class Run:
    """One technique at one table size, ready to time: its layer, optimizer, compiled step and id batches."""

    def __init__(self, technique: str, table: np.ndarray, trainable_from: int, batches: list[tf.Tensor],
                 queries: tf.Tensor, targets: tf.Tensor):
        self.technique, self.batches = technique, batches
        self.layer, self.optimizer = build(technique, table, trainable_from)
        self.layer(batches[0])  # creates the variables
        self.step = make_step(self.layer, self.optimizer, queries, targets)
        started = time.perf_counter()
        float(self.step(batches[0]))  # trace + first step
        self.warm_up_seconds = time.perf_counter() - started
        self.best, self.steps_timed = np.inf, 0
        self.timed(1)  # first estimate of one step

    def timed(self, steps: int) -> float:
        """Seconds per step over `steps` consecutive steps (synchronized on the last loss)."""
        start = time.perf_counter()
        for i in range(steps):
            loss = self.step(self.batches[i % len(self.batches)])
        float(loss)
        seconds = (time.perf_counter() - start) / steps
        self.best = min(self.best, seconds)
        self.steps_timed += steps
        return seconds

    def slot_elements(self) -> int:
        """Elements of the optimizer's per-variable state (slots), i.e. every non-scalar optimizer variable."""
        return int(sum(int(np.prod(v.shape)) for v in self.optimizer.variables() if v.shape.rank))


def steps_per_repeat(run: Run, steps: int, budget: float) -> int:
    """Steps per timed repeat so that REPEATS repeats take about `budget` seconds, at most `steps` in total."""
    return int(np.clip(budget / (run.best * REPEATS), 1, max(1, steps // REPEATS)))


def measure(run: Run, steps: int, budget: float) -> dict:
    """Fastest of REPEATS timed repeats (or the single estimate when one step exceeds half the budget)."""
    note = ""
    if run.best * 2 > budget:
        note = f"1 step only (> {budget / 2:.0f}s/step)"
    else:
        per_repeat = steps_per_repeat(run, steps, budget)
        for _ in range(REPEATS):
            run.timed(per_repeat)
        if per_repeat * REPEATS < steps:
            note = f"limited to {per_repeat * REPEATS} steps by the time budget"
    return {"technique": run.technique, "optimizer": OPTIMIZER[run.technique], "seconds": run.best,
            "slot_elements": run.slot_elements(), "note": note}


def measure_interleaved(runs: dict[int, Run], steps: int, budget: float) -> dict[int, dict]:
    """Times one technique at several sizes round-robin, so a burst of load from other processes hits all
    sizes alike and the size ratio stays fair."""
    per_repeat = {size: steps_per_repeat(run, steps, budget) for size, run in runs.items()}
    for _ in range(REPEATS):
        for size, run in runs.items():
            run.timed(per_repeat[size])
    return {size: {"technique": run.technique, "optimizer": OPTIMIZER[run.technique], "seconds": run.best,
                   "slot_elements": run.slot_elements(), "note": ""} for size, run in runs.items()}


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100k,1M,4M", help="table sizes in rows, comma separated (k/M suffixes)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per technique and size (at most)")
    parser.add_argument("--tail", type=int, default=10_000, help="trainable rows at the end of the table")
    parser.add_argument("--budget", type=float, default=12.0, help="seconds per technique and size (about)")
    parser.add_argument("--techniques", default=",".join(TECHNIQUES))
    args = parser.parse_args(argv)
    sizes = [parse_size(size) for size in args.sizes.split(",")]
    techniques = [name.strip() for name in args.techniques.split(",")]
    for name in techniques:
        if name not in TECHNIQUES:
            parser.error(f"unknown technique {name!r}; known: {', '.join(TECHNIQUES)}")
    if "ours" not in techniques:
        techniques.insert(0, "ours")

    rng = np.random.default_rng(0)
    queries = tf.constant(rng.standard_normal((args.batch, args.dim), dtype=np.float32))
    targets = tf.constant(rng.standard_normal(args.batch, dtype=np.float32))
    print(f"dim {args.dim}, batch {args.batch}, trainable tail {args.tail:,} rows, ~half of each batch in the tail, "
          f"budget ~{args.budget:.0f}s per technique and size")
    began = time.perf_counter()
    worlds = {}
    for size in sizes:
        tail = min(args.tail, size - 1)
        trainable_from = size - tail
        table = rng.standard_normal((size, args.dim), dtype=np.float32) * np.float32(0.05)
        in_tail = rng.random((DISTINCT_BATCHES, args.batch)) < 0.5
        ids = np.where(in_tail, rng.integers(trainable_from, size, (DISTINCT_BATCHES, args.batch)),
                       rng.integers(0, trainable_from, (DISTINCT_BATCHES, args.batch)))
        worlds[size] = (table, trainable_from, [tf.constant(row, tf.int64) for row in ids])

    # Ours at every size first, interleaved: the size ratio is the headline number.
    runs = {size: Run("ours", table, t, batches, queries, targets) for size, (table, t, batches) in worlds.items()}
    ours = measure_interleaved(runs, args.steps, args.budget)
    del runs
    gc.collect()
    results = {size: [ours[size]] for size in sizes}
    full = {}
    for size, (table, trainable_from, batches) in worlds.items():
        for technique in techniques:
            if technique == "ours":
                continue
            print(f"  measuring {technique} at {size:,} rows ...", file=sys.stderr, flush=True)
            run = Run(technique, table, trainable_from, batches, queries, targets)
            results[size].append(measure(run, args.steps, args.budget))
            del run
            gc.collect()
        full[size] = next((r for r in results[size] if r["technique"] == "full"), None)
        worlds[size] = None  # frees the table
        gc.collect()

    header = f"{'rows':>9} {'technique':<11} {'optimizer':<8} {'ms/step':>9} {'examples/s':>12} {'x ours':>7} " \
             f"{'slot elements':>14}  note"
    print(header)
    print("-" * len(header))
    for size in sizes:
        for result in results[size]:
            ratio = result["seconds"] / ours[size]["seconds"]
            print(f"{size:>9,} {result['technique']:<11} {result['optimizer']:<8} {result['seconds'] * 1e3:>9.2f} "
                  f"{args.batch / result['seconds']:>12,.0f} {ratio:>7.1f} {result['slot_elements']:>14,}  "
                  f"{result['note']}")

    print(f"\ntotal bench time {time.perf_counter() - began:.0f}s")
    smallest, largest = min(ours), max(ours)
    size_ratio = ours[largest]["seconds"] / ours[smallest]["seconds"]
    slowest = min(args.batch / result["seconds"] for result in ours.values())
    print(f"ours: step time at {largest:,} rows / at {smallest:,} rows = {size_ratio:.2f} "
          f"(target <= {TARGET_SIZE_RATIO}): {'PASS' if size_ratio <= TARGET_SIZE_RATIO else 'MISS'}")
    print(f"ours: slowest throughput {slowest:,.0f} examples/s at dim {args.dim} "
          f"(target >= {TARGET_EXAMPLES_PER_SECOND:,}): {'PASS' if slowest >= TARGET_EXAMPLES_PER_SECOND else 'MISS'}")
    if full.get(largest):
        print(f"optimizer state at {largest:,} rows: ours {ours[largest]['slot_elements']:,} slot elements "
              f"(the tail's) vs {full[largest]['slot_elements']:,} for Adam over the fully trainable table")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
