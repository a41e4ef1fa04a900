"""The shift rule (pipeline/output/alerts.py) as a pure function: its false-alarm rate on
simulated quiet group-nights, its power on a real jump, and changes reported as changes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from vip2scan.pipeline.output.alerts import (ERRORS, FLAGGED, MODEL_CHANGED, THRESHOLD_CHANGED,
                                             AlertRule, GroupNight, evaluate, evaluate_night,
                                             group_thresholds, shift_p_value)

QUIET_GROUP_NIGHTS = 1000


def night(i: int, rows: int, flagged: int, errors: int = 0, thresholds: str = "0.5",
          model: str = "m1", group: str = "line1/") -> GroupNight:
    return GroupNight(run_id=f"run{i:03d}", night=f"2026-01-{i + 1:02d}", group=group,
                      prefix=f"file:///lake/{group}", model_id=model, thresholds=thresholds,
                      rows=rows, ok=rows - errors, flagged=flagged, errors=errors)


def quiet_nights(rng: np.random.Generator, rule: AlertRule, images: int, rate: float
                 ) -> list[GroupNight]:
    """A group's window of nights and tonight, every count binomial with the same rates."""
    nights = []
    for i in range(rule.window + 1):
        errors = int(rng.binomial(images, rate / 2))
        nights.append(night(i, images, int(rng.binomial(images - errors, rate)), errors))
    return nights


@pytest.mark.parametrize("images,rate", [(40, 0.01), (40, 0.05), (500, 0.01), (5000, 0.02)])
def test_false_alarm_rate_on_quiet_nights_is_within_alpha(images: int, rate: float) -> None:
    rule = AlertRule()
    rng = np.random.default_rng(images * 1000 + int(rate * 1000))
    fired = {FLAGGED: 0, ERRORS: 0}
    for _ in range(QUIET_GROUP_NIGHTS):
        *earlier, tonight = quiet_nights(rng, rule, images, rate)
        alerts, change = evaluate_night(tonight, earlier, rule)
        assert change is None
        for alert in alerts:
            fired[alert["kind"]] += 1
    print(f"{images} images/night at rate {rate}: {fired} false alerts in "
          f"{QUIET_GROUP_NIGHTS} quiet group-nights")
    # The rule's size is at most alpha per measure; allow the binomial scatter of a sample.
    most = binom.ppf(0.999, QUIET_GROUP_NIGHTS, rule.alpha)
    assert fired[FLAGGED] <= most and fired[ERRORS] <= most


def test_the_exact_test_is_not_vacuous_at_a_loose_alpha() -> None:
    """At alpha 0.05 without the ratio condition the quiet alarm rate is near, not far below,
    alpha: the bound is a real one (a test that never fires would also pass the one above)."""
    rule = AlertRule(alpha=0.05, min_ratio=1.0)
    rng = np.random.default_rng(5)
    fired = 0
    for _ in range(QUIET_GROUP_NIGHTS):
        *earlier, tonight = quiet_nights(rng, rule, 500, 0.02)
        fired += sum(a["kind"] == FLAGGED for a in evaluate_night(tonight, earlier, rule)[0])
    assert 0.01 * QUIET_GROUP_NIGHTS < fired <= binom.ppf(0.999, QUIET_GROUP_NIGHTS, 0.05)


def test_a_jump_from_one_to_nine_percent_is_an_alert() -> None:
    rule = AlertRule()
    earlier = [night(i, 200, 2) for i in range(14)]  # 1 %
    alerts, change = evaluate_night(night(14, 200, 18), earlier, rule)  # 9 %
    assert change is None and [a["kind"] for a in alerts] == [FLAGGED]
    alert = alerts[0]
    assert (alert["count"], alert["n"], alert["baseline_count"], alert["baseline_n"]) == (18, 200, 28, 2800)
    assert alert["p_value"] <= rule.alpha and alert["baseline_nights"] == 14
    assert "line1/ flagged images: 18 of 200 (9.0 %) vs 1.0 % over the previous 14" in alert["line"]
    # on 40 images, 4 flagged (10 %) against 1 %: suggestive (p ~ 0.006), not an alert
    assert evaluate_night(night(14, 40, 4), [night(i, 40, i % 2) for i in range(14)], rule)[0] == []


def test_error_rows_are_tested_separately_from_flagged_images() -> None:
    earlier = [night(i, 30, 1) for i in range(5)]
    alerts, _ = evaluate_night(night(5, 30, 1, errors=8), earlier, AlertRule())
    assert [(a["kind"], a["count"], a["n"]) for a in alerts] == [(ERRORS, 8, 30)]


def test_small_or_short_histories_and_small_ratios_do_not_alert() -> None:
    rule = AlertRule()
    assert evaluate_night(night(3, 30, 20), [night(i, 30, 0) for i in range(2)], rule) == ([], None)
    assert evaluate_night(night(5, 10, 9), [night(i, 30, 0) for i in range(5)], rule) == ([], None)
    # significant on a large lake, but only 1.5 times the usual rate: not news
    big = [night(i, 100_000, 1000) for i in range(14)]
    assert evaluate_night(night(14, 100_000, 1500), big, rule) == ([], None)
    assert shift_p_value(1500, 100_000, 14_000, 1_400_000) < 1e-20


def test_a_threshold_or_model_change_is_reported_as_a_change_not_a_shift() -> None:
    rule = AlertRule()
    earlier = [night(i, 30, 0) for i in range(5)]
    alerts, change = evaluate_night(night(5, 30, 25, thresholds="0.3"), earlier, rule)
    assert alerts == [] and change is not None
    assert (change["kind"], change["from"], change["to"]) == (THRESHOLD_CHANGED, "0.5", "0.3")
    alerts, change = evaluate_night(night(5, 30, 25, model="m2"), earlier, rule)
    assert alerts == [] and change["kind"] == MODEL_CHANGED
    # the nights after a change compare only with nights of the new threshold
    after = [*earlier, night(5, 30, 25, thresholds="0.3"), night(6, 30, 24, thresholds="0.3")]
    assert evaluate_night(night(7, 30, 26, thresholds="0.3"), after, rule) == ([], None)


def test_evaluate_orders_runs_and_groups() -> None:
    nights = [night(i, 30, 0, group=g) for i in range(4) for g in ("a/", "b/")]
    nights += [night(4, 30, 15, group="a/"), night(4, 30, 0, group="b/", errors=12)]
    runs = [f"run{i:03d}" for i in range(5)]
    verdicts = evaluate(reversed(nights), runs, AlertRule())
    assert [v.run_id for v in verdicts] == runs
    assert [(a["group"], a["kind"]) for a in verdicts[-1].alerts] == [("a/", FLAGGED), ("b/", ERRORS)]
    assert all(not v.alerts and not v.changes for v in verdicts[:-1])
    assert [v.run_id for v in evaluate(nights, runs, AlertRule(), only={"run004"})] == ["run004"]


def test_group_thresholds_name_the_ones_that_apply_to_the_group() -> None:
    by_prefix = {"s3://lake/line1/": 0.7, "s3://lake/line2/": 0.2, "s3://lake/": 0.4}
    assert group_thresholds("s3://lake/line1/", 0.5, by_prefix) == "0.5 s3://lake/=0.4 .=0.7"
    assert group_thresholds("s3://lake/line3/", 0.5, {}) == "0.5"
