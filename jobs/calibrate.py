"""`vip2scan calibrate OUT --expected-rate 0.01 [--by 'line*/']`: image thresholds without labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.deadline import DEFAULT_DEADLINE, DeadlineOption, reader_deadline
from vip2scan.jobs.errors import BadParameter
from vip2scan.jobs.storage import StorageOption
from vip2scan.jobs.terminal import printable

if TYPE_CHECKING:
    from vip2scan.pipeline.output.calibration import Calibration

EXAMPLE = ("Example: vip2scan calibrate s3://bucket/vip2scan-out --expected-rate 0.01 --by 'line*/'   "
           "(then scan as usual: later scans of that model flag about 1 % of images per line)")


def check_rate(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise BadParameter(f"must be between 0 and 1 (exclusive), got {value:g}")
    return value


def check_glob(value: Optional[str]) -> Optional[str]:
    if value is not None and not value.strip("/ "):
        raise BadParameter("needs a glob naming a folder level, e.g. 'line*/'")
    return value


def _share(count: int, total: int) -> str:
    return f"{count:>5} {100.0 * count / total:5.1f} %" if total else f"{count:>5}      -"


def format_table(calibration: Calibration) -> str:
    """One line per prefix (with --by) and one for all scores: threshold, flagged before/after."""
    header = ("prefix" if calibration.groups else "", "scores", "threshold", "flagged before",
              "flagged after")
    # A group is a folder name from the lake: control characters must not reach the terminal.
    rows = [(printable(g.group), str(g.n_scores),
             "(overall)" if g.image_threshold is None else f"{g.image_threshold:.5f}",
             _share(g.flagged_before, g.n_scores), _share(g.flagged_after, g.n_scores))
            for g in calibration.groups]
    unmatched = calibration.n_scores - sum(g.n_scores for g in calibration.groups)
    if calibration.by and unmatched:
        rows.append(("(no match)", str(unmatched), "(overall)", "", ""))
    rows.append(("all", str(calibration.n_scores), f"{calibration.image_threshold:.5f}",
                 _share(calibration.flagged_before, calibration.n_scores),
                 _share(calibration.flagged_after, calibration.n_scores)))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def calibrate(
    out: Annotated[str, typer.Argument(help="The scan's output location (path or URI).")],
    expected_rate: Annotated[float, typer.Option(
        "--expected-rate", callback=check_rate, metavar="RATE",
        help="Fraction of images expected to be defective, e.g. 0.01: the threshold becomes "
             "the (1 - RATE) quantile of the latest scores.")],
    by: Annotated[Optional[str], typer.Option(
        "--by", callback=check_glob, metavar="GLOB",
        help="One threshold per folder prefix matching GLOB, e.g. 'line*/' (case-insensitive; "
             "* also matches '/').")] = None,
    model_id: Annotated[Optional[str], typer.Option(
        "--model-id", help="Calibrate this model (default: the model of the newest run that "
                           "scored images).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the thresholds without saving them.")] = False,
    storage_option: StorageOption = None,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    config: ConfigOption = None,
) -> None:
    """Set the image threshold from the lake's own latest scores (no labels needed).

    Saved per model in OUT/calibration.json. Later scans of that model into OUT use it, unless --image-threshold is given or the checkpoint has labelled thresholds (eval --calibrate). Rows already scored keep their is_anomalous.
    """  # noqa: E501 - one line per paragraph: the help reflows it
    from vip2scan.pipeline.output.calibration import (calibration_notes, compute_calibration,
                                               latest_scores, save_calibration)
    from vip2scan.pipeline.output.paths import CALIBRATION
    from vip2scan.pipeline.output.views import Outputs

    outputs = Outputs(out, storage_options_from_flags(storage_option))
    with reader_deadline("calibrate", deadline):
        outputs.require_exists()
        latest = latest_scores(outputs, model_id)
    calibration = compute_calibration(latest, expected_rate, by)
    typer.echo(f"model {calibration.model_id}: {calibration.n_scores} latest scores, expected "
               f"rate {expected_rate:g} -> threshold = the {calibration.quantile:g} quantile")
    typer.echo(format_table(calibration))
    for note in calibration_notes(latest, calibration):
        typer.echo(f"warning: {note}")
    if dry_run:
        typer.echo("not saved (--dry-run)")
        return
    save_calibration(outputs.location, calibration)
    typer.echo(f"saved {outputs.uri(CALIBRATION)}: later scans of model {calibration.model_id} "
               f"into this OUT use it ({calibration.source}); rows already scored keep their "
               "is_anomalous (scan --full re-scores them)")


def register(app: typer.Typer) -> None:
    app.command("calibrate", epilog=EXAMPLE)(calibrate)
