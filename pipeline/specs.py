"""Every setting of a scan, one frozen spec per concept, each with its defaults and validation.

    MapSpec         --maps, --map-size, --map-dtype, --maps-per-shard
    SelectionSpec   --include, --exclude, --suffixes, --manifest, --limit, --full, --retry-errors
    EngineSpec      --engine, --batch-size, --actors, --gpus-per-actor, --compile, ... (+ API-only sizing)
    LimitSpec       --max-image-pixels, --max-object-bytes, per-object time limits
    ThresholdSpec   --image-threshold (alias --threshold), --pixel-threshold
    RunSpec         --dry-run, --wait, the lease and staging cadence
    ReaderSpec      --deadline of verify, query, report, explore, calibrate (not in ScanOptions)
    (ModelSpec      --checkpoint, --backbone, --weights, --image-size: vip2scan.model.factory)

A field's name is its flag's name (``map_size`` is ``--map-size``), and no two specs share a field
name, so ``ScanOptions(map_size=128)``, the flag, a config file key and the run record's ``config``
all say the same thing. A value is checked once, in its spec's ``__post_init__``, which raises
:class:`vip2scan.errors.InvalidSetting` (the CLI: a usage error, exit 2) however it came in.
The plan embeds the specs it freezes and the stages derive their settings from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from vip2scan.errors import InvalidSetting
from vip2scan.model.factory import ModelSpec
from vip2scan.model.images import DEFAULT_MAX_IMAGE_PIXELS
from vip2scan.settings import flag, one_of, real, text, texts, whole

ENGINES = ("auto", "ray", "local")
MAX_BATCH_SIZE = 4096
MAP_MODES = ("all", "anomalous", "none")
MAP_DTYPES = ("float16", "uint8")
MAX_MAP_SIZE = 4096  # a 4096 px float16 map is 32 MB: larger is a typo, not a map
MAX_MAPS_PER_SHARD = 256  # output/map_format.py: a shard of about 4 MB at the usual sizes


@dataclass(frozen=True)
class MapSpec:
    """Which rows get an anomaly map in the Zarr store, and how it is stored.

    ``maps``: ``all`` rows, only ``anomalous`` ones (at or above the image threshold in force),
    or ``none``; ``map_size``: the stored map's side in pixels; ``map_dtype``: ``float16`` or
    ``uint8`` (quantised, error <= 1/508); ``maps_per_shard``: maps per shard object (None: about
    4 MB of maps, fewer for a small run; the plan freezes the number it chose).
    """

    maps: str = "all"
    map_size: int = 256
    map_dtype: str = "float16"
    maps_per_shard: int | None = None

    def __post_init__(self) -> None:
        one_of("maps", self.maps, MAP_MODES)
        object.__setattr__(self, "map_size", whole("map_size", self.map_size, 1, MAX_MAP_SIZE))
        one_of("map_dtype", self.map_dtype, MAP_DTYPES)
        object.__setattr__(self, "maps_per_shard", whole(
            "maps_per_shard", self.maps_per_shard, 1, MAX_MAPS_PER_SHARD, optional=True))

    @property
    def enabled(self) -> bool:
        return self.maps != "none"


@dataclass(frozen=True)
class SelectionSpec:
    """Which objects a run considers (the listing) and which of them it scores (the diff).

    ``include``/``exclude``: globs on the key relative to SOURCE, any case, ``*`` also matches
    ``/``; ``suffixes``: image suffixes beyond the defaults (Pillow must open them); ``manifest``:
    a Parquet/CSV listing instead of listing SOURCE; ``manifest_any_source``: accept its entries
    outside SOURCE (never inside OUT); ``limit``: score at most this many (the rest is
    deferred); ``full``: rescore unchanged objects too; ``retry_errors``: rescore unchanged
    objects whose last row was an error.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    manifest: str | None = None
    manifest_any_source: bool = False
    limit: int | None = None
    full: bool = False
    retry_errors: bool = False

    def __post_init__(self) -> None:
        from .selection.listing import extra_suffixes

        object.__setattr__(self, "include", texts("include", self.include))
        object.__setattr__(self, "exclude", texts("exclude", self.exclude))
        object.__setattr__(self, "suffixes", extra_suffixes(self.suffixes))
        text("manifest", self.manifest)
        flag("manifest_any_source", self.manifest_any_source)
        object.__setattr__(self, "limit", whole("limit", self.limit, 1, optional=True))
        flag("full", self.full)
        flag("retry_errors", self.retry_errors)

    def object_filter(self) -> Any:
        """The listing's filter (selection/listing.py ``ObjectFilter``)."""
        from .selection.listing import IMAGE_SUFFIXES, ObjectFilter

        return ObjectFilter(IMAGE_SUFFIXES + self.suffixes, self.include, self.exclude)


@dataclass(frozen=True)
class EngineSpec:
    """Where and how the stages run (engines/): the engine, the actor pool and batch sizes.

    ``engine``: ``ray`` (Ray Data, the product), ``local`` (the same stages on threads in this
    process) or ``auto`` (local below ``engines.AUTO_LOCAL_MAX_IMAGES`` images and no cluster).
    ``batch_size``: images per model call (CPU, 2 cores, vip2-tiny: 36 img/s end to end vs 33 at
    16). ``actors``: (min, max) inference actors (None: one per GPU, else one). The fields after
    ``compile`` have no flag: sizing and fault tolerance set deliberately, not left to Ray's
    defaults (which retry crashed tasks and restart crashed actors forever, so a poison input
    loops the run).
    """

    engine: str = "auto"
    batch_size: int = 32
    actors: tuple[int, int] | None = None
    gpus_per_actor: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    torch_threads: int | None = None  # CPU actors; None: cluster CPUs // max actors
    decode_cpus: float = 0.5  # per decode task; decode is I/O + PIL, mostly GIL-free
    device: str | None = None  # None: cuda when the actor sees a GPU, else cpu
    channels_last: bool = False  # model input layout (only the patch embedding cares)
    compile: bool = False  # torch.compile in each actor (static shapes: short batches padded)
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray
    # Batches queued at an actor (their blocks are fetched while the model runs) and, of those,
    # how many run at once: one on the model, one writing its maps.
    max_tasks_in_flight_per_actor: int = 3
    concurrent_calls_per_actor: int = 2
    object_store_budget_mb: float | None = None  # None: see engines.ray.object_store_budget
    task_max_retries: int = 3  # a read or decode task whose worker process died
    actor_max_restarts: int = 3  # an inference actor whose process died (OOM, segfault, kill)
    actor_max_task_retries: int = 3  # the batches it held, resubmitted to the restarted actor
    ray_init_kwargs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        one_of("engine", self.engine, ENGINES)
        object.__setattr__(self, "batch_size", whole("batch_size", self.batch_size, 1, MAX_BATCH_SIZE))
        if self.actors is not None:
            pair = tuple(self.actors) if not isinstance(self.actors, (int, str)) else ()
            if len(pair) != 2:
                raise InvalidSetting("actors", f"expected (min, max), got {self.actors!r}")
            low, high = (whole("actors", v) for v in pair)
            if high < low:  # type: ignore[operator]
                raise InvalidSetting("actors", f"need 1 <= MIN <= MAX, got {low}..{high}")
            object.__setattr__(self, "actors", (low, high))
        real("gpus_per_actor", self.gpus_per_actor, 0.0, optional=True)
        real("cpus_per_actor", self.cpus_per_actor, 0.0, low_open=True)
        whole("torch_threads", self.torch_threads, 1, optional=True)
        real("decode_cpus", self.decode_cpus, 0.0, low_open=True)
        if self.device is not None and not str(self.device).startswith(("cpu", "cuda", "mps")):
            raise InvalidSetting("device", f"expected cpu, cuda or cuda:N, got {self.device!r}")
        flag("channels_last", self.channels_last)
        flag("compile", self.compile)
        text("ray_address", self.ray_address)
        for name in ("max_tasks_in_flight_per_actor", "concurrent_calls_per_actor"):
            whole(name, getattr(self, name), 1)
        real("object_store_budget_mb", self.object_store_budget_mb, 0.0, low_open=True, optional=True)
        for name in ("task_max_retries", "actor_max_restarts", "actor_max_task_retries"):
            whole(name, getattr(self, name), 0)


# Objects larger than this are error rows, never read: no image within the pixel limit needs
# more (178 Mpx x 4 bytes uncompressed is 716 MB), and reading one is a whole RAM's worth.
DEFAULT_MAX_OBJECT_BYTES = 1 << 30


@dataclass(frozen=True)
class LimitSpec:
    """Per-object limits of the read + decode stage: an object past one is an error row.

    ``max_image_pixels``: the decompression-bomb guard; ``max_object_bytes``: larger objects are
    never read; ``max_batch_read_bytes``: a decode task holds at most this many bytes at once;
    ``read_timeout_s``/``decode_timeout_s``: a hung read or decode (None or 0: no limit). A
    decode of the largest allowed image takes a few seconds; a read group is at most
    ``max_batch_read_bytes``, two minutes even at 2 MB/s.
    """

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_batch_read_bytes: int = 256 << 20
    decode_timeout_s: float | None = 60.0
    read_timeout_s: float | None = 120.0

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_object_bytes", "max_batch_read_bytes"):
            object.__setattr__(self, name, whole(name, getattr(self, name), 1))
        for name in ("decode_timeout_s", "read_timeout_s"):
            real(name, getattr(self, name), 0.0, optional=True)


@dataclass(frozen=True)
class ThresholdSpec:
    """Thresholds asked for explicitly (None: the checkpoint's labelled ones, else OUT's
    label-free calibration, else 0.5; output/calibration.py). Scores are in [0, 1]."""

    image_threshold: float | None = None
    pixel_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("image_threshold", "pixel_threshold"):
            object.__setattr__(self, name, real(name, getattr(self, name), 0.0, 1.0, optional=True))


@dataclass(frozen=True)
class RunSpec:
    """How a run is carried out: a dry run, the lease on OUT, the staging and commit cadence.

    ``wait``: False refuses a locked OUT, True waits, seconds waits that long; ``lock_ttl_s``: a
    lease not renewed for this long is taken over; ``stage_rows``/``stage_seconds``: rows per
    durable staging part, or the time between parts (the resume granularity).
    """

    dry_run: bool = False
    wait: bool | float = False
    lock_ttl_s: float = 300.0
    heartbeat_s: float | None = None
    stage_rows: int = 2048
    stage_seconds: float = 30.0
    max_rows_per_file: int = 1_000_000

    def __post_init__(self) -> None:
        flag("dry_run", self.dry_run)
        if not isinstance(self.wait, bool):
            real("wait", self.wait, 0.0)
        real("lock_ttl_s", self.lock_ttl_s, 0.0, low_open=True)
        real("heartbeat_s", self.heartbeat_s, 0.0, low_open=True, optional=True)
        object.__setattr__(self, "stage_rows", whole("stage_rows", self.stage_rows, 1))
        real("stage_seconds", self.stage_seconds, 0.0)
        object.__setattr__(self, "max_rows_per_file",
                           whole("max_rows_per_file", self.max_rows_per_file, 1))


@dataclass(frozen=True)
class ReaderSpec:
    """How long a reader command (verify, query, report, explore, calibrate) may spend in one
    step before it stops with one line and exit 1 (pipeline/deadline.py); not a scan setting.

    ``deadline``: seconds per step, None or 0: no deadline. A step of a large OUT (one run's
    rows, the snapshot check) takes seconds to a few minutes; a stuck read takes forever.
    """

    deadline: float | None = 600.0

    def __post_init__(self) -> None:
        real("deadline", self.deadline, 0.0, optional=True)


# ScanOptions attribute -> spec class; a flat setting belongs to the one spec with that field.
SPECS: dict[str, type] = {
    "model_spec": ModelSpec, "map_spec": MapSpec, "selection_spec": SelectionSpec,
    "engine_spec": EngineSpec, "limit_spec": LimitSpec, "threshold_spec": ThresholdSpec,
    "run_spec": RunSpec,
}
# Older spellings of a setting, accepted by ScanOptions(...) and config files.
ALIASES = {"threshold": "image_threshold"}


def _owners() -> dict[str, str]:
    owners: dict[str, str] = {}
    for attribute, cls in SPECS.items():
        for f in fields(cls):
            if f.name in owners:
                raise TypeError(f"setting {f.name!r} is declared by two specs")
            owners[f.name] = attribute
    return owners


OWNER = _owners()  # setting name -> ScanOptions attribute holding its spec


def build_specs(given: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The specs for ScanOptions: ``given`` spec objects by attribute, with the flat ``settings``
    applied on top (each to the spec that declares it); an unknown name is a TypeError, like a
    dataclass's unexpected keyword."""
    per_spec: dict[str, dict[str, Any]] = {}
    for name, value in settings.items():
        name = ALIASES.get(name, name)
        if name not in OWNER:
            raise TypeError(f"ScanOptions got an unexpected setting {name!r}")
        per_spec.setdefault(OWNER[name], {})[name] = value
    specs = {}
    for attribute, cls in SPECS.items():
        base = given.get(attribute)
        if base is not None and not isinstance(base, cls):
            raise TypeError(f"{attribute} must be a {cls.__name__}, got {type(base).__name__}")
        changes = per_spec.get(attribute, {})
        specs[attribute] = replace(base, **changes) if base is not None else cls(**changes)
    return specs


def spec_settings(spec: Any) -> dict[str, Any]:
    """A spec's settings by name (for the run record: plain values only)."""
    return {f.name: getattr(spec, f.name) for f in fields(spec) if f.repr}


def default_of(spec: type, name: str) -> Any:
    """A setting's default, as its spec declares it (for --help texts that must not drift)."""
    return spec.__dataclass_fields__[name].default
