"""Specifications of the retrain decision and of the append-only drift history (real Parquet files)."""
from __future__ import annotations

import datetime
import json
import math

import pytest

from accrete.pipeline.config import AccreteConfig, DriftConfig
from accrete.pipeline.decision import (
    HISTORY_SCHEMA,
    THRESHOLD_DIRECTIONS,
    RetrainDecision,
    append_drift_history,
    decide,
    drift_record,
    read_drift_history,
)
from accrete.pipeline.drift import METRIC_KEYS
from accrete.pipeline.errors import StoreError

CONFIG = DriftConfig(psi_item_popularity=0.25, quality_ratio_min=0.7, patience=2, cooldown_days=7,
                     max_days_since_full_retrain=90)


def calm_metrics(**overrides: float) -> dict[str, float]:
    """A step with every metric measured and nothing past its default threshold."""
    metrics = {key: 0.0 for key in METRIC_KEYS} | {"quality_ratio": 1.0, "lift_ratio": 1.0, "recall_at_10": 0.2,
                                                   "days_since_full_retrain": 30.0, "new_row_norm_ratio": 1.0}
    return metrics | overrides


# ------------------------------------------------------------------------------------------------ decide


def test_every_triggering_metric_is_a_computed_metric_with_a_config_threshold():
    assert set(THRESHOLD_DIRECTIONS) <= set(METRIC_KEYS)
    assert THRESHOLD_DIRECTIONS["quality_ratio"] == "below"
    decision = decide(calm_metrics(), previous_streaks={}, days_since_full_retrain=30, config=CONFIG)
    assert decision.thresholds["quality_ratio"] == 0.7
    assert decision.thresholds["new_user_share"] is None


def test_a_calm_step_does_not_retrain_and_gives_no_reasons():
    decision = decide(calm_metrics(), previous_streaks={}, days_since_full_retrain=30, config=CONFIG)
    assert not decision.retrain
    assert decision.reasons == []
    assert not any(decision.breaches.values())
    assert set(decision.streaks.values()) == {0}


def test_a_single_breach_waits_for_patience_and_does_not_retrain():
    decision = decide(calm_metrics(psi_item_popularity=0.41), previous_streaks={}, days_since_full_retrain=30,
                      config=CONFIG)
    assert not decision.retrain
    assert decision.breaches["psi_item_popularity"]
    assert decision.streaks["psi_item_popularity"] == 1
    assert decision.reasons == ["waiting: psi_item_popularity 0.41 > 0.25 for 1 consecutive step (patience 2)"]


def test_a_second_consecutive_breach_meets_patience_and_retrains_with_metric_value_and_threshold_in_reasons():
    first = decide(calm_metrics(psi_item_popularity=0.41), previous_streaks={}, days_since_full_retrain=30,
                   config=CONFIG)
    second = decide(calm_metrics(psi_item_popularity=0.38), previous_streaks=first.streaks,
                    days_since_full_retrain=31, config=CONFIG)
    assert second.retrain
    assert second.streaks["psi_item_popularity"] == 2
    assert second.reasons == ["psi_item_popularity 0.38 > 0.25 for 2 consecutive steps (patience 2)"]


def test_a_step_back_under_the_threshold_resets_the_streak():
    first = decide(calm_metrics(psi_item_popularity=0.41), previous_streaks={}, days_since_full_retrain=30,
                   config=CONFIG)
    calm = decide(calm_metrics(psi_item_popularity=0.1), previous_streaks=first.streaks,
                  days_since_full_retrain=31, config=CONFIG)
    again = decide(calm_metrics(psi_item_popularity=0.41), previous_streaks=calm.streaks,
                   days_since_full_retrain=32, config=CONFIG)
    assert calm.streaks["psi_item_popularity"] == 0
    assert not again.retrain and again.streaks["psi_item_popularity"] == 1


def test_quality_breaches_below_its_minimum():
    decision = decide(calm_metrics(quality_ratio=0.62), previous_streaks={"quality_ratio": 1},
                      days_since_full_retrain=30, config=CONFIG)
    assert decision.retrain
    assert decision.reasons == ["quality_ratio 0.62 < 0.7 for 2 consecutive steps (patience 2)"]


def test_nan_never_breaches_and_resets_the_streak():
    decision = decide(calm_metrics(psi_item_popularity=math.nan, rating_js_divergence=math.nan,
                                   quality_ratio=math.nan),
                      previous_streaks={"psi_item_popularity": 5, "quality_ratio": 5},
                      days_since_full_retrain=30, config=CONFIG)
    assert not decision.retrain
    assert not any(decision.breaches.values())
    assert decision.streaks["psi_item_popularity"] == 0


def test_a_metric_without_a_threshold_never_breaches():
    decision = decide(calm_metrics(new_item_share=0.99), previous_streaks={"new_item_share": 9},
                      days_since_full_retrain=30, config=CONFIG)
    assert not decision.retrain
    assert decision.streaks["new_item_share"] == 0


def test_cooldown_suppresses_a_drift_trigger_and_says_so_while_the_streak_keeps_counting():
    decision = decide(calm_metrics(psi_item_popularity=0.5), previous_streaks={"psi_item_popularity": 1},
                      days_since_full_retrain=3, config=CONFIG)
    assert not decision.retrain
    assert decision.streaks["psi_item_popularity"] == 2
    assert decision.reasons == ["cooldown: psi_item_popularity 0.5 > 0.25 for 2 consecutive steps (patience 2) "
                                "suppressed, 3 days since last full retrain < 7"]
    after = decide(calm_metrics(psi_item_popularity=0.5), previous_streaks=decision.streaks,
                   days_since_full_retrain=7, config=CONFIG)
    assert after.retrain
    assert after.reasons == ["psi_item_popularity 0.5 > 0.25 for 3 consecutive steps (patience 2)"]


def test_the_age_cap_always_retrains_even_without_drift_and_within_cooldown():
    decision = decide(calm_metrics(), previous_streaks={}, days_since_full_retrain=91, config=CONFIG)
    assert decision.retrain
    assert decision.reasons == ["age: 91 days since last full retrain >= 90"]
    capped = decide(calm_metrics(), previous_streaks={}, days_since_full_retrain=5,
                    config=DriftConfig(cooldown_days=7, max_days_since_full_retrain=5))
    assert capped.retrain
    assert not decide(calm_metrics(), previous_streaks={}, days_since_full_retrain=89, config=CONFIG).retrain


def test_to_record_is_flat_and_json_serialisable():
    decision = decide(calm_metrics(psi_item_popularity=0.5), previous_streaks={"psi_item_popularity": 1},
                      days_since_full_retrain=30, config=CONFIG)
    record = decision.to_record()
    json.dumps(record)
    assert record["retrain"] is True
    assert record["reasons"] == "psi_item_popularity 0.5 > 0.25 for 2 consecutive steps (patience 2)"
    assert record["threshold/psi_item_popularity"] == 0.25
    assert record["threshold/new_item_share"] is None
    assert record["streak/psi_item_popularity"] == 2
    assert not any(isinstance(value, (dict, list)) for value in record.values())


def test_a_decision_round_trips_through_its_record_and_through_the_drift_history(tmp_path):
    decision = decide(calm_metrics(psi_item_popularity=0.5, quality_ratio=0.6),
                      previous_streaks={"psi_item_popularity": 1}, days_since_full_retrain=30, config=CONFIG)
    assert RetrainDecision.from_record(json.loads(json.dumps(decision.to_record()))) == decision
    record = drift_record(datetime.date(2024, 1, 2), 1, 0, calm_metrics(), decision)
    append_drift_history(tmp_path, record)
    row = read_drift_history(tmp_path).iloc[0].to_dict()
    assert RetrainDecision.from_record(row) == decision


# ---------------------------------------------------------------------------------------- drift history


def _record(day: int, version: int, psi: float = 0.1) -> dict:
    metrics = calm_metrics(psi_item_popularity=psi, rating_js_divergence=math.nan)
    decision = decide(metrics, previous_streaks={}, days_since_full_retrain=day, config=CONFIG)
    return drift_record(datetime.date(2024, 1, day), version, 1, metrics, decision)


def test_drift_record_has_date_version_metrics_decision_thresholds_and_streaks():
    record = _record(2, 7, psi=0.3)
    assert record["date"] == "2024-01-02" and record["version"] == 7 and record["generation"] == 1
    assert set(METRIC_KEYS) <= set(record)
    assert record["psi_item_popularity"] == 0.3
    assert record["retrain"] is False
    assert record["reasons"].startswith("waiting: psi_item_popularity 0.3 > 0.25")
    assert record["streak/psi_item_popularity"] == 1
    assert record["threshold/quality_ratio"] == 0.7
    assert list(record) == HISTORY_SCHEMA.names


def test_two_appends_give_two_rows_sorted_by_date_and_version(tmp_path):
    history = tmp_path / "drift"
    second = append_drift_history(history, _record(3, 2, psi=0.3))
    first = append_drift_history(history, _record(2, 1))
    assert first.name == "2024-01-02_v000001.parquet" and second.name == "2024-01-03_v000002.parquet"
    frame = read_drift_history(history)
    assert list(frame["date"]) == ["2024-01-02", "2024-01-03"]
    assert list(frame["version"]) == [1, 2]
    assert list(frame["psi_item_popularity"]) == [0.1, 0.3]
    assert frame["rating_js_divergence"].isna().all()
    assert frame["threshold/new_item_share"].isna().all()
    assert list(frame["streak/psi_item_popularity"]) == [0, 1]
    assert list(frame.columns) == HISTORY_SCHEMA.names


def test_appending_the_same_date_and_version_again_is_refused_and_leaves_the_first_file_intact(tmp_path):
    path = append_drift_history(tmp_path, _record(2, 1, psi=0.1))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="2024-01-02_v000001.parquet.*append-only"):
        append_drift_history(tmp_path, _record(2, 1, psi=0.9))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind


def test_reading_an_absent_history_gives_an_empty_frame_with_the_expected_columns(tmp_path):
    frame = read_drift_history(tmp_path / "nothing-yet")
    assert frame.empty
    assert list(frame.columns) == HISTORY_SCHEMA.names


def test_a_damaged_history_file_is_a_store_error_naming_it(tmp_path):
    append_drift_history(tmp_path, _record(2, 1))
    damaged = tmp_path / "2024-01-03_v000002.parquet"
    damaged.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StoreError, match="2024-01-03_v000002.parquet: damaged"):
        read_drift_history(tmp_path)


def test_a_history_file_whose_content_does_not_match_its_name_is_a_store_error(tmp_path):
    path = append_drift_history(tmp_path, _record(2, 1))
    path.rename(tmp_path / "2024-01-09_v000001.parquet")
    with pytest.raises(StoreError, match="2024-01-09_v000001.parquet: damaged.*holds date 2024-01-02"):
        read_drift_history(tmp_path)


def test_leftover_temporary_files_of_an_interrupted_append_are_ignored(tmp_path):
    append_drift_history(tmp_path, _record(2, 1))
    (tmp_path / ".2024-01-03_v000002.parquet.abc.tmp").write_bytes(b"half written")
    assert len(read_drift_history(tmp_path)) == 1


def test_a_record_with_extra_metrics_is_stored_and_read_back_beside_older_rows(tmp_path):
    append_drift_history(tmp_path, _record(2, 1))
    metrics = calm_metrics() | {"quality/ndcg@10": 0.3, "quality/users": 120}
    decision = decide(metrics, previous_streaks={}, days_since_full_retrain=3, config=CONFIG)
    append_drift_history(tmp_path, drift_record(datetime.date(2024, 1, 3), 2, 1, metrics, decision))
    frame = read_drift_history(tmp_path)
    assert math.isnan(frame["quality/ndcg@10"][0]) and frame["quality/ndcg@10"][1] == 0.3
    assert frame["quality/users"][1] == 120.0


def test_a_metric_named_like_a_decision_column_is_refused():
    decision = decide(calm_metrics(), previous_streaks={}, days_since_full_retrain=3, config=CONFIG)
    with pytest.raises(ValueError, match="streak/quality_ratio"):
        drift_record(datetime.date(2024, 1, 3), 2, 1, calm_metrics() | {"streak/quality_ratio": 1.0}, decision)


def test_fired_reasons_leave_out_waiting_and_cooldown_notes():
    from accrete.pipeline.decision import fired_reasons

    reasons = ["psi_item_popularity 0.41 > 0.25 for 2 consecutive steps (patience 2)",
               "waiting: quality_ratio 0.45 < 0.5 for 1 consecutive step (patience 2)",
               "cooldown: rating_js_divergence 0.2 > 0.1 suppressed, 3 days since last full retrain < 7"]
    assert fired_reasons(reasons) == reasons[:1]
    assert fired_reasons("; ".join(reasons)) == reasons[:1]
    assert fired_reasons("") == []


def test_an_aging_model_retrains_on_its_lift_over_popularity_and_a_hard_week_does_not():
    config = AccreteConfig().drift
    aging = decide(calm_metrics(lift_ratio=0.6), previous_streaks={"lift_ratio": 1}, days_since_full_retrain=30,
                   config=config)
    assert aging.retrain and any(reason.startswith("lift_ratio 0.6 < 0.8") for reason in aging.reasons)
    # A hard week: recall falls for the model and its control alike, so the lift holds.
    hard_week = decide(calm_metrics(quality_ratio=0.5, lift_ratio=1.02), previous_streaks={}, days_since_full_retrain=30,
                       config=config)
    assert not hard_week.retrain


def test_the_age_cap_in_periods():
    config = AccreteConfig().replace(drift={"max_periods_since_full_retrain": 12}).drift
    assert decide(calm_metrics(), previous_streaks={}, days_since_full_retrain=30, config=config,
                  periods_since_full_retrain=12).reasons == ["age: 12 periods since last full retrain >= 12"]
    assert not decide(calm_metrics(), previous_streaks={}, days_since_full_retrain=30, config=config,
                      periods_since_full_retrain=11).retrain
