"""The scan pipeline: object storage -> Ray Data -> Parquet scores + Zarr maps.

    from vip2scan.pipeline import scan, ScanOptions, read_map
    summary = scan("s3://lake/images", "s3://results/scan", "s3://models/ckpt", ScanOptions())
    amap = read_map(row, "s3://results/scan")   # float32 [height, width]

Importing this package does not import Ray or torch; they load when a scan needs them.
"""

from .errors import ScanError
from .options import ScanOptions
from .output.schema import SCHEMA_VERSION, SCORES_SCHEMA
from .output.views import read_map, read_scores
from .run.lock import OutputLocked
from .run.scan import RunSummary, ScanInterrupted, scan
from .specs import EngineSpec, LimitSpec, MapSpec, RunSpec, SelectionSpec, ThresholdSpec

__all__ = [
    "scan", "ScanOptions", "MapSpec", "SelectionSpec", "EngineSpec", "LimitSpec", "ThresholdSpec",
    "RunSpec", "RunSummary", "ScanError", "ScanInterrupted", "OutputLocked", "read_map", "read_scores",
    "SCORES_SCHEMA", "SCHEMA_VERSION",
]
