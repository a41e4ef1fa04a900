"""Anomaly-rate alerts: a night on which a group of the lake flags (or fails) far more of its
images than on its recent nights.

The shift rule, per group (the top-level prefix below the run's source by default, or the
prefixes a ``--by`` glob matches, as in ``calibrate``) and per run, applied twice, separately:
to the share of flagged images among the run's ok rows, and to the share of error rows among
all its rows in the group.

- **Baseline**: the group's previous nights (runs with rows in the group), newest first, up to
  ``window`` (14) of them, as long as they scored with tonight's model and the group's
  tonight's image threshold(s). A night whose model or threshold differs from the group's
  previous night is reported as a change (``changes``), never tested.
- **Test**: one-sided exact conditional test of two binomial proportions (Fisher's exact
  test): given the flagged images of tonight and the baseline together, the number that fall
  on tonight's ``n`` images is hypergeometric under "same rate"; the p-value is
  ``P(X >= k)``, from ``scipy.stats.hypergeom``. No rate is estimated, so the test is exact
  whatever the group's true rate.
- **Alert** when ``p <= alpha`` (0.001), tonight has at least ``min_images`` (20) images, the
  baseline has at least ``min_nights`` (3) nights, and tonight's rate is at least
  ``min_ratio`` (2) times the baseline's: a real but tiny drift on a large lake is not news.

False alarms: on quiet nights (counts binomial with one rate) the conditional test's size is
at most ``alpha``, for any rate and any sizes; the extra conditions only remove alerts. So a
group-night raises a false alert with probability at most 0.1 % per measure, at most 0.2 %
for both. ``tests/pipeline/output/test_alerts.py`` measures it on simulated quiet nights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

FLAGGED, ERRORS = "flagged", "errors"
MODEL_CHANGED, THRESHOLD_CHANGED = "model_changed", "threshold_changed"
DEFAULT_BY = "*/"  # the first folder below the run's source


@dataclass(frozen=True)
class AlertRule:
    """The shift rule's parameters (see the module text)."""

    window: int = 14
    min_nights: int = 3
    min_images: int = 20
    alpha: float = 0.001
    min_ratio: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GroupNight:
    """One run's rows in one group: what the rule compares."""

    run_id: str
    night: str  # the run's scan date
    group: str  # 'line3/' below the run's source; '(top level)' for objects right under it
    prefix: str  # the absolute URI prefix
    model_id: str
    thresholds: str  # the image threshold(s) in force for the group, as text
    rows: int
    ok: int
    flagged: int
    errors: int


def shift_p_value(k: int, n: int, baseline_k: int, baseline_n: int) -> float:
    """P(X >= k) for X hypergeometric: ``n`` of ``n + baseline_n`` images drawn, of which
    ``k + baseline_k`` are the marked ones (one-sided Fisher exact test)."""
    from scipy.stats import hypergeom

    if k <= 0:
        return 1.0
    return float(hypergeom.sf(k - 1, n + baseline_n, k + baseline_k, n))


def is_shift(k: int, n: int, baseline_k: int, baseline_n: int, rule: AlertRule) -> tuple[bool, float]:
    """Whether ``k`` of ``n`` tonight is a shift from ``baseline_k`` of ``baseline_n``, and the p-value."""
    if n < rule.min_images or baseline_n <= 0 or k <= 0:
        return False, 1.0
    p = shift_p_value(k, n, baseline_k, baseline_n)
    big_enough = k * baseline_n >= rule.min_ratio * baseline_k * n
    return (p <= rule.alpha and big_enough), p


def group_thresholds(prefix: str, image_threshold: Any, by_prefix: dict[str, Any] | None) -> str:
    """The image threshold(s) a run applied to a group's rows, as comparable text: the global
    one, and each per-prefix one inside the group or holding it."""
    parts = [f"{float(image_threshold):.6g}" if image_threshold is not None else "-"]
    for key, value in sorted((by_prefix or {}).items()):
        if key.startswith(prefix) or prefix.startswith(key):
            parts.append(f"{key.removeprefix(prefix) or '.'}={float(value):.6g}")
    return " ".join(parts)


def _alert(kind: str, tonight: GroupNight, k: int, n: int, base_k: int, base_n: int,
           nights: int, p: float) -> dict[str, Any]:
    what = "flagged images" if kind == FLAGGED else "error rows"
    rate, base_rate = k / n, (base_k / base_n if base_n else 0.0)
    return {
        "kind": kind, "run_id": tonight.run_id, "night": tonight.night, "group": tonight.group,
        "prefix": tonight.prefix, "count": k, "n": n, "rate": round(rate, 6),
        "baseline_count": base_k, "baseline_n": base_n, "baseline_rate": round(base_rate, 6),
        "baseline_nights": nights, "p_value": float(f"{p:.3g}"),
        "line": (f"{tonight.group} {what}: {k} of {n} ({100 * rate:.1f} %) vs "
                 f"{100 * base_rate:.1f} % over the previous {nights} night(s), p = {p:.2g}"),
    }


def _change(tonight: GroupNight, before: GroupNight) -> dict[str, Any]:
    if tonight.model_id != before.model_id:
        kind, old, new, what = MODEL_CHANGED, before.model_id, tonight.model_id, "model"
    else:
        kind, old, new, what = THRESHOLD_CHANGED, before.thresholds, tonight.thresholds, "image threshold"
    return {"kind": kind, "run_id": tonight.run_id, "night": tonight.night, "group": tonight.group,
            "prefix": tonight.prefix, "from": old, "to": new,
            "line": (f"{tonight.group} {what} changed ({old} -> {new}): not compared with "
                     "earlier nights")}


def evaluate_night(tonight: GroupNight, earlier: Sequence[GroupNight], rule: AlertRule
                   ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Alerts and the change (if any) of one group-night, given the group's earlier nights
    (oldest first)."""
    if not earlier:
        return [], None
    previous = earlier[-1]
    if (previous.model_id, previous.thresholds) != (tonight.model_id, tonight.thresholds):
        return [], _change(tonight, previous)
    baseline: list[GroupNight] = []
    for night in reversed(earlier):
        if len(baseline) >= rule.window or \
                (night.model_id, night.thresholds) != (tonight.model_id, tonight.thresholds):
            break
        baseline.append(night)
    if len(baseline) < rule.min_nights:
        return [], None
    alerts = []
    for kind, k, n, base_k, base_n in (
            (FLAGGED, tonight.flagged, tonight.ok,
             sum(b.flagged for b in baseline), sum(b.ok for b in baseline)),
            (ERRORS, tonight.errors, tonight.rows,
             sum(b.errors for b in baseline), sum(b.rows for b in baseline))):
        fires, p = is_shift(k, n, base_k, base_n, rule)
        if fires:
            alerts.append(_alert(kind, tonight, k, n, base_k, base_n, len(baseline), p))
    return alerts, None


@dataclass
class RunAlerts:
    """One run's verdict: its alerts (shifts) and changes (model or threshold)."""

    run_id: str
    night: str
    alerts: list[dict[str, Any]]
    changes: list[dict[str, Any]]


def evaluate(group_nights: Iterable[GroupNight], run_order: Sequence[str], rule: AlertRule,
             only: set[str] | None = None) -> list[RunAlerts]:
    """Each run's alerts and changes (runs in ``run_order``, oldest first; ``only``: just
    these runs, still with their earlier nights as baselines)."""
    position = {run_id: i for i, run_id in enumerate(run_order)}
    by_group: dict[str, list[GroupNight]] = {}
    for item in sorted(group_nights, key=lambda g: position.get(g.run_id, -1)):
        if item.run_id in position and item.rows > 0:
            by_group.setdefault(item.prefix, []).append(item)
    verdicts = {run_id: RunAlerts(run_id, "", [], []) for run_id in run_order
                if only is None or run_id in only}
    for nights in by_group.values():
        for i, tonight in enumerate(nights):
            verdict = verdicts.get(tonight.run_id)
            if verdict is None:
                continue
            verdict.night = tonight.night
            alerts, change = evaluate_night(tonight, nights[max(0, i - 4 * rule.window):i], rule)
            verdict.alerts += alerts
            if change is not None:
                verdict.changes.append(change)
    for verdict in verdicts.values():
        verdict.alerts.sort(key=lambda a: (a["group"], a["kind"]))
        verdict.changes.sort(key=lambda a: (a["group"], a["kind"]))
    return list(verdicts.values())
