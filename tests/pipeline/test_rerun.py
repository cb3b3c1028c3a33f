"""Reruns after a crash or kill complete the work without redoing what was published."""
from __future__ import annotations

from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.store import Store

from tests.pipeline.conftest import IALS_SMALL


def test_rerunning_the_same_full_retrain_publishes_nothing_and_a_changed_setting_retrains(gen_world, gen_dates, tmp_path):
    store = tmp_path / "store"
    first = run_full_retrain(gen_world, store, gen_dates[1], config=IALS_SMALL)
    again = run_full_retrain(gen_world, store, gen_dates[1], config=IALS_SMALL)
    assert (first.kind, again.kind, again.version) == ("full_retrain", "skipped", 1)
    assert "already the full retrain as of" in again.message
    assert Store(store).current_version() == 1
    changed = run_full_retrain(gen_world, store, gen_dates[1], config=IALS_SMALL.replace(model={"dim": 6}))
    assert changed.kind == "full_retrain" and changed.version == 2
    windowed = run_full_retrain(gen_world, store, gen_dates[1], config=IALS_SMALL.replace(model={"dim": 6}),
                                window_days=1)
    assert windowed.version == 3
