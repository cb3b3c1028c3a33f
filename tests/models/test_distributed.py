"""Specification of training under `tf.distribute.MirroredStrategy` (two logical CPU replicas): old rows stay
bit-identical and the trainable tails learn.

Logical devices must be configured before TensorFlow initializes its runtime, so the training runs in a fresh
Python subprocess that saves the tables before and after training; the assertions are made here.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# One subprocess (TensorFlow start-up plus tracing the replicated step for both objectives): ~20 s.
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from accrete import models  # sets TF_USE_LEGACY_KERAS first
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from accrete.models.mf import build_model, train

    out = sys.argv[1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    n_users, n_items, dim = 40, 30, 4
    users = np.concatenate([np.arange(n_users), rng.integers(0, n_users, 216)])
    items = np.concatenate([np.arange(n_items), rng.integers(0, n_items, 226)])
    ratings = rng.uniform(1, 5, len(users)).astype(np.float32)
    report = {"replicas": strategy.num_replicas_in_sync}
    for objective in ("retrieval", "rating"):
        kwargs = dict(user_table=rng.normal(0, 0.1, (n_users, dim)).astype(np.float32),
                      item_table=rng.normal(0, 0.1, (n_items, dim)).astype(np.float32),
                      user_bias=np.zeros(n_users, np.float32), item_bias=np.zeros(n_items, np.float32),
                      user_trainable_from=30, item_trainable_from=18, bias_policy="frozen",
                      objective=objective, l2=0.01, global_bias=3.0)
        model = build_model(strategy, **kwargs)
        before = model.tables()
        fit = train(model, users=users, items=items, ratings=ratings, epochs=3, batch_size=64,
                    learning_rate=0.1, strategy=strategy)
        after = model.tables()
        np.savez(f"{out}/{objective}.npz", **{f"before_{k}": v for k, v in before.items()},
                 **{f"after_{k}": v for k, v in after.items()})
        report[objective] = {
            "loss": fit["loss"],
            "mirrored": type(model.item_embedding.tail).__name__,
            "slot_rows": sorted({int(v.shape[0]) for v in model.optimizer.variables() if v.shape.rank}),
        }
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=REPO, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, json.loads(completed.stdout.strip().splitlines()[-1])


def test_training_runs_on_two_mirrored_replicas(distributed_run):
    _, report = distributed_run
    assert report["replicas"] == 2
    for objective in ("retrieval", "rating"):
        assert report[objective]["mirrored"] == "MirroredVariable"
        assert len(report[objective]["loss"]) == 3 and all(np.isfinite(report[objective]["loss"]))
        assert report[objective]["slot_rows"] == [40 - 30, 30 - 18]  # optimizer state only for the tails


@pytest.mark.parametrize("objective", ["retrieval", "rating"])
def test_frozen_rows_are_bit_identical_and_tails_move_under_mirrored_strategy(distributed_run, objective):
    out, _ = distributed_run
    tables = np.load(out / f"{objective}.npz")
    for name, boundary in (("user", 30), ("item", 18), ("item_bias", 18)):
        before, after = tables[f"before_{name}"], tables[f"after_{name}"]
        assert before[:boundary].tobytes() == after[:boundary].tobytes(), name
        moved = after[boundary:] != before[boundary:]
        assert np.all(moved.reshape(len(moved), -1).any(axis=1)), f"every {name} tail row must move"
