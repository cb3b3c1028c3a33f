"""Drift-triggered full retrains on the synthetic world, with the default drift settings.

60 daily periods with a regime shift on day 30: the retrain triggers within 3 steps after the shift and
never before it. The same world without a shift: no drift-triggered retrain in 60 steps.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.decision import fired_reasons, read_drift_history
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.synthetic import generate_world

pytestmark = pytest.mark.slow

# Default drift settings; a smaller model and one epoch keep 60 steps affordable in CI.
CONFIG = AccreteConfig().replace(model={"dim": 16}, train={"epochs": 1, "retrain_epochs": 3})
SHIFT_DAY = 30


def replay(tmp_path: Path, shift_day: int | None) -> list[tuple[int, list[str]]]:
    """Bootstrap on day 0, then one nightly step per day, retraining when the decision says so.
    Returns (day, reasons) for each drift-triggered retrain."""
    data, store = tmp_path / "data", tmp_path / "store"
    generate_world(data, days=60, seed=0, shift_day=shift_day)
    dates = contract.list_partitions(data)
    run_full_retrain(data, store, dates[0], config=CONFIG)
    retrains = []
    for day, date in enumerate(dates[1:], start=1):
        step = run_incremental_step(data, store, date, config=CONFIG)
        if step.manifest["drift"]["retrain"]:
            reasons = fired_reasons(step.manifest["drift"]["reasons"])
            retrains.append((day, reasons))
            run_full_retrain(data, store, date, config=CONFIG, reason="; ".join(reasons))
    history = read_drift_history(store / "drift")
    assert len(history) == 60  # one row per step, every step recorded
    assert history["retrain"].sum() == len(retrains)
    return retrains


def test_a_regime_shift_triggers_a_retrain_within_three_steps_and_never_before(tmp_path):
    retrains = replay(tmp_path, SHIFT_DAY)
    assert retrains, "the shift did not trigger a retrain"
    first_day, reasons = retrains[0]
    assert SHIFT_DAY <= first_day <= SHIFT_DAY + 3, retrains
    assert any("psi_item_popularity" in r or "quality_ratio" in r for r in reasons), retrains


def test_a_stationary_world_triggers_no_drift_retrain_in_sixty_steps(tmp_path):
    assert replay(tmp_path, None) == []
