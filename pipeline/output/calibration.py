"""Label-free image thresholds: ``OUT/calibration.json``, written by ``vip2scan calibrate``.

Most lakes have no labels, and zero-shot scores sit in a narrow band that differs per product
line, so the default threshold 0.5 can flag most of a lake. Calibration sets the image
threshold of one model to the (1 - rate) quantile of its latest ok scores in OUT, so about
``rate`` of such images are flagged; with a glob (``--by 'line*/'``) it sets one threshold per
matching prefix. Later scans of that model read it when they plan a run.

Precedence when a scan plans a run (:func:`pick_thresholds`): an explicit threshold, then the
checkpoint's labelled thresholds (``eval --calibrate``), then OUT's calibration of the model,
then the default 0.5, reported as uncalibrated. A calibration changes later scans only:
committed rows keep the ``is_anomalous`` their run decided (the run record says with what).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vip2scan.model.config import is_unit_number
from vip2scan.model.factory import ModelFacts

from ..errors import PipelineError
from ..specs import ThresholdSpec
from ..storage.location import Location
from .paths import CALIBRATION
from .records import read_json, write_json
from .calibration_sql import analyst_memory, calibration_stats, load_rows
from .views import Outputs, sql_str

CALIBRATION_VERSION = 1
DEFAULT_THRESHOLD = 0.5
SOURCE_FLAG = "flag"
SOURCE_LABELLED = "labelled"
SOURCE_DEFAULT = "default (uncalibrated)"


class CalibrationError(PipelineError):
    """Calibration cannot run or OUT's calibration file cannot be used (one line)."""


class BadThreshold(ValueError):
    """A calibration file's threshold that is not a number from 0 to 1."""


def label_free_source(rate: float, by: str | None = None) -> str:
    """How a run record names a label-free threshold: 'label-free rate 0.01 [per 'line*/']'."""
    return f"label-free rate {rate:g}" + (f" per {by!r}" if by else "")


@dataclass(frozen=True)
class Thresholds:
    """The thresholds a run scores with, where the image threshold came from, and the
    per-prefix ones of a label-free calibration; frozen in the plan, so a resumed run scores
    like its first attempt, and written to the run record under the same names."""

    image_threshold: float
    pixel_threshold: float
    threshold_source: str  # 'flag', 'labelled', 'label-free rate R [per GLOB]', SOURCE_DEFAULT
    image_thresholds: dict[str, float] = field(default_factory=dict)  # URI prefix -> threshold
    note: str = ""  # why an available calibration was not used

    def for_rows(self, uris: Sequence[str]) -> np.ndarray:
        """Each row's image threshold (see :func:`row_thresholds`)."""
        return row_thresholds(uris, self.image_threshold, self.image_thresholds)


@dataclass(frozen=True)
class GroupThreshold:
    """One prefix's threshold (None: too few scores, the overall threshold applies)."""

    group: str  # the prefix below the lake's root, for people: 'line3/'
    prefix: str  # the absolute URI prefix scans match: 's3://lake/line3/'
    n_scores: int
    image_threshold: float | None
    flagged_before: int
    flagged_after: int


@dataclass(frozen=True)
class Calibration:
    """A label-free calibration of one model, as saved in OUT/calibration.json."""

    model_id: str
    expected_rate: float
    quantile: float
    n_scores: int
    image_threshold: float
    flagged_before: int
    flagged_after: int
    created_at: str
    by: str | None = None
    groups: tuple[GroupThreshold, ...] = ()
    other_model_rows: int = 0  # latest rows scored by other models, not used

    @property
    def source(self) -> str:
        return label_free_source(self.expected_rate, self.by)

    def by_prefix(self) -> dict[str, float]:
        return {g.prefix: g.image_threshold for g in self.groups if g.image_threshold is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"version": CALIBRATION_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["groups"] = tuple(GroupThreshold(**g) for g in values.get("groups") or ())
        # A NaN or out-of-range threshold would flag nothing (or everything) without a word.
        for name, value in [("image_threshold", values.get("image_threshold")),
                            *((f"{g.group!r} threshold", g.image_threshold) for g in values["groups"]
                              if g.image_threshold is not None)]:
            if not is_unit_number(value):
                raise BadThreshold(f"{name} {value!r} is not a number from 0 to 1")
        return cls(**values)


# --------------------------------------------------------------------------- the file

def read_calibrations(out: Location) -> dict[str, Calibration]:
    """Every model's calibration in OUT ({} when OUT has none); a damaged file is an error,
    not a silent fall-back to 0.5."""
    if not out.exists(CALIBRATION):
        return {}
    content = read_json(out, CALIBRATION)
    try:
        models = (content or {})["models"]
        return {model_id: Calibration.from_dict(entry) for model_id, entry in models.items()}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        why = str(exc) if isinstance(exc, BadThreshold) else type(exc).__name__
        raise CalibrationError(f"{out.join(CALIBRATION)} is unreadable ({why}); "
                               "rerun `vip2scan calibrate` to rewrite it") from None


def save_calibration(out: Location, calibration: Calibration) -> None:
    """Add or replace this model's calibration; other models' entries are kept. One atomic
    write (rename locally, a single PUT on object stores), so a scan never reads half a file."""
    try:
        models = {k: v.to_dict() for k, v in read_calibrations(out).items()}
    except CalibrationError:
        models = {}  # a damaged file is replaced: calibrating is how its error says to fix it
    models[calibration.model_id] = calibration.to_dict()
    write_json(out, {"version": CALIBRATION_VERSION, "models": models}, CALIBRATION)


def pick_thresholds(requested: ThresholdSpec, labelled_image: float | None,
                    labelled_pixel: float | None, calibration: Calibration | None) -> Thresholds:
    """Explicit values win, then the checkpoint's labelled ones, then OUT's label-free
    calibration (image threshold only), then 0.5, reported as uncalibrated."""
    pixel = requested.pixel_threshold if requested.pixel_threshold is not None else labelled_pixel
    pixel = float(DEFAULT_THRESHOLD if pixel is None else pixel)
    if requested.image_threshold is not None:
        return Thresholds(float(requested.image_threshold), pixel, SOURCE_FLAG)
    if labelled_image is not None:
        return Thresholds(float(labelled_image), pixel, SOURCE_LABELLED)
    if calibration is not None:
        return Thresholds(float(calibration.image_threshold), pixel, calibration.source,
                          calibration.by_prefix())
    return Thresholds(DEFAULT_THRESHOLD, pixel, SOURCE_DEFAULT)


def resolve_thresholds(requested: ThresholdSpec, facts: ModelFacts,
                       out: Location | None = None) -> Thresholds:
    """The thresholds a scan of ``facts``' model into ``out`` uses (see :func:`pick_thresholds`):
    the checkpoint's labelled values come from ``facts``, OUT's calibration from OUT."""
    if out is None:
        return pick_thresholds(requested, facts.image_threshold, facts.pixel_threshold, None)
    calibrations = read_calibrations(out)
    picked = pick_thresholds(requested, facts.image_threshold, facts.pixel_threshold,
                             calibrations.get(facts.model_id))
    if picked.threshold_source == SOURCE_DEFAULT and calibrations:
        others = ", ".join(sorted(calibrations))
        return replace(picked, note=f"{CALIBRATION} calibrates model(s) {others}, "
                                    f"not {facts.model_id}")
    return picked


def row_thresholds(uris: Any, default: float,
                   by_prefix: Mapping[str, float] | Sequence[tuple[str, float]]) -> np.ndarray:
    """Each row's image threshold: its longest matching prefix's, else ``default`` (float64,
    so comparing float32 scores to it is exact). ``uris``: a sequence, numpy or Arrow array."""
    pairs = dict(by_prefix)
    out = np.full(len(uris), float(default), dtype=np.float64)
    if not pairs or not len(uris):
        return out
    if isinstance(uris, pa.ChunkedArray):
        uris = uris.combine_chunks()
    if not isinstance(uris, pa.Array):
        uris = pa.array(uris if isinstance(uris, np.ndarray) else list(uris), pa.string())
    # A UTF-8 string starts with a prefix exactly when its bytes do: one lookup per prefix
    # length, longest first, instead of one startswith per row and prefix.
    heads = uris.cast(pa.large_binary())
    unset = np.ones(len(uris), dtype=bool)
    by_length: dict[int, list[str]] = {}
    for prefix in pairs:
        by_length.setdefault(len(prefix.encode()), []).append(prefix)
    for length in sorted(by_length, reverse=True):
        keys = by_length[length]
        index = pc.index_in(pc.binary_slice(heads, 0, length),
                            value_set=pa.array([k.encode() for k in keys], pa.large_binary()))
        index = index.fill_null(-1).to_numpy(zero_copy_only=False)
        hit = unset & (index >= 0)
        out[hit] = np.asarray([float(pairs[k]) for k in keys])[index[hit]]
        unset &= ~hit
    return out


def flagged_now(calibration: Calibration, uris: Any, scores: np.ndarray) -> int:
    """How many of these scores ``calibration`` flags (what a rescan would decide)."""
    limits = row_thresholds(uris, calibration.image_threshold, calibration.by_prefix())
    return int((np.asarray(scores, dtype=np.float64) >= limits).sum())


# --------------------------------------------------------------------------- computing one

USABLE = "status = 'ok' AND image_score IS NOT NULL AND NOT isnan(image_score)"


@dataclass(frozen=True)
class LatestScores:
    """Which latest ok rows of OUT calibrate one model (read in DuckDB when computed), and
    what else the latest view holds."""

    model_id: str
    n_scores: int
    outputs: Outputs
    roots: list[str]  # the sources of OUT's runs, shortest first
    other_models: dict[str, int]  # model_id -> latest ok rows not used
    labelled: bool  # the model's newest run used labelled thresholds

    def rows_sql(self) -> str:
        """SELECT image_uri, score, flagged of these rows."""
        return ("SELECT image_uri, image_score::DOUBLE AS score, coalesce(is_anomalous, false) "
                f"AS flagged FROM latest WHERE {USABLE} AND model_id = {sql_str(self.model_id)}")


def latest_scores(outputs: Outputs, model_id: str | None) -> LatestScores:
    """The latest ok scores of ``model_id`` (default: the model of the newest run that scored)."""
    records = outputs.run_records()
    scoring = [r for r in records if (r.get("counts") or {}).get("scored")]
    if not scoring:
        raise CalibrationError(f"no run under {outputs.location.display()} has scored an image: "
                               "scan the lake first")
    model_id = model_id or str(scoring[-1].get("model_id"))
    con = outputs.connect(analyst_memory())
    try:
        counts = dict(con.execute(f"SELECT model_id, count(*) FROM latest WHERE {USABLE} AND "
                                  "model_id IS NOT NULL GROUP BY model_id").fetchall())
    finally:
        con.close()
    mine = counts.pop(model_id, 0)
    if mine == 0:
        known = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items())) or "none"
        raise CalibrationError(f"no latest scores of model {model_id} under "
                               f"{outputs.location.display()} (models with latest scores: {known})")
    newest = [r for r in records if r.get("model_id") == model_id]
    return LatestScores(
        model_id=model_id, n_scores=int(mine), outputs=outputs,
        roots=sorted({str(r.get("source")) for r in records if r.get("source")}, key=len),
        other_models=counts,
        labelled=bool(newest) and newest[-1].get("threshold_source") == SOURCE_LABELLED)


def relative_key(uri: str, roots: Sequence[str]) -> tuple[str, str]:
    """(root, key below it) for the shortest run source holding ``uri``, so a scan of a
    sub-prefix and of its parent group the same object alike; else the URI's own path."""
    for root in roots:
        if uri.startswith(root.rstrip("/") + "/"):
            return root.rstrip("/") + "/", uri[len(root.rstrip("/")) + 1:]
    protocol, sep, path = uri.partition("://")
    return (f"{protocol}://", path) if sep else ("", uri)


def group_of(key: str, pattern: str) -> str | None:
    """The shortest folder prefix of ``key`` matching the glob (case-insensitive, ``*``
    crosses '/'), e.g. 'line3/' for 'line3/day01/img.png' and 'line*/'; None if none does."""
    pattern = pattern.lower() if pattern.endswith("/") else pattern.lower() + "/"
    for i, char in enumerate(key):
        if char == "/" and fnmatch.fnmatchcase(key[:i + 1].lower(), pattern):
            return key[:i + 1]
    return None


def min_scores(rate: float) -> int:
    """Scores a quantile needs to mean something: enough that ``rate`` of them is one image."""
    return max(2, math.ceil(1.0 / rate - 1e-9))


def quantile_threshold(scores: np.ndarray, rate: float) -> float:
    """The (1 - rate) quantile (numpy's linear interpolation) of the scores."""
    return float(np.quantile(scores, 1.0 - rate))


def compute_calibration(latest: LatestScores, rate: float, by: str | None = None,
                        now: dt.datetime | None = None) -> Calibration:
    """The calibration of ``latest``'s model at ``rate`` (0 < rate < 1), optionally per prefix.

    A prefix with fewer than :func:`min_scores` scores keeps the overall threshold (a 1 %
    quantile of 30 scores is noise); so do objects under no matching prefix. Computed in
    DuckDB (calibration_sql.py): memory stays bounded at any lake size.
    """
    if not 0.0 < rate < 1.0:
        raise CalibrationError(f"expected rate must be between 0 and 1, got {rate:g}")
    con = latest.outputs.connect(analyst_memory())
    try:
        load_rows(con, latest.rows_sql(), latest.roots, by)
        everything, stats = calibration_stats(con, rate, min_scores(rate))
    finally:
        con.close()
    groups = tuple(GroupThreshold(
        group=g.group, prefix=g.root + g.group, n_scores=g.n_scores, image_threshold=g.quantile,
        flagged_before=g.flagged_before, flagged_after=g.flagged_after) for g in stats)
    now = now or dt.datetime.now(dt.timezone.utc)
    return Calibration(
        model_id=latest.model_id, expected_rate=rate, quantile=1.0 - rate,
        n_scores=everything.n_scores, image_threshold=float(everything.quantile),
        flagged_before=everything.flagged_before, flagged_after=everything.flagged_after,
        created_at=now.isoformat(timespec="seconds"), by=by, groups=groups,
        other_model_rows=sum(latest.other_models.values()))


def calibration_notes(latest: LatestScores, calibration: Calibration) -> list[str]:
    """Warnings worth a line: too few scores, other models' rows, labelled thresholds."""
    notes = []
    rate = calibration.expected_rate
    if calibration.n_scores < min_scores(rate):
        notes.append(f"only {calibration.n_scores} scores: a rate of {rate:g} needs at least "
                     f"{min_scores(rate)} for a stable threshold")
    fallback = [g.group for g in calibration.groups if g.image_threshold is None]
    if fallback:
        notes.append(f"{len(fallback)} prefix(es) with fewer than {min_scores(rate)} scores use "
                     f"the overall threshold: {', '.join(fallback[:5])}"
                     + (" ..." if len(fallback) > 5 else ""))
    if calibration.by and not calibration.groups:
        notes.append(f"no object is under a prefix matching {calibration.by!r}: one overall "
                     "threshold")
    if latest.other_models:
        shown = ", ".join(f"{k} ({v} rows)" for k, v in sorted(latest.other_models.items()))
        notes.append(f"latest rows of other models not used: {shown}; --model-id calibrates "
                     "another model")
    if latest.labelled:
        notes.append(f"model {latest.model_id} was last scanned with labelled thresholds "
                     "(eval --calibrate): those keep winning over this calibration")
    return notes
