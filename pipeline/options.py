"""ScanOptions: everything a scan can be told (they mirror the CLI flags)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from vip2scan.model.images import DEFAULT_MAX_IMAGE_PIXELS

from .storage.redaction import public_options, redact
from .stages.decode import (DEFAULT_DECODE_TIMEOUT_S, DEFAULT_MAX_OBJECT_BYTES,
                            DEFAULT_READ_TIMEOUT_S)
from .storage.location import FilesystemWrapper

ProgressCallback = Callable[[int, int], None]
NotifyCallback = Callable[[str], None]
TodoCallback = Callable[[str, str], None]  # (reason, image_uri)


@dataclass
class ScanOptions:
    """Options of a scan (they mirror the CLI flags). ``storage_options`` is never recorded."""

    # model
    backbone: str | None = None  # override the checkpoint's backbone
    weights: str | None = None  # override its backbone weights (tag, path or URI)
    image_size: int | None = None  # override its input size
    threshold: float | None = None  # image threshold; default: checkpoint's, else 0.5
    pixel_threshold: float | None = None  # pixel threshold; default: checkpoint's, else 0.5
    # compute
    batch_size: int = 32  # CPU (2 cores, vip2-tiny): 36 img/s end to end vs 33 at 16
    actors: tuple[int, int] | None = None  # (min, max) inference actors
    gpus_per_actor: float | None = None  # None: 1 per actor when the cluster has GPUs
    cpus_per_actor: float = 1.0
    torch_threads: int | None = None  # CPU actors; None: cluster CPUs // max actors
    decode_cpus: float = 0.5
    device: str | None = None  # None: cuda when the actor sees a GPU, else cpu
    amp: str | None = "auto"  # autocast on CUDA: "auto" (bf16), "fp16", "off"
    channels_last: bool = False  # model input layout (only the patch embedding cares)
    compile: bool = False  # torch.compile the detector in each actor (worth it on GPUs)
    max_tasks_in_flight_per_actor: int = 3
    # outputs
    map_size: int = 256
    write_maps: bool = True  # False: the same as maps="none"
    maps: str = "all"  # all | anomalous (only rows at or above the threshold) | none
    map_dtype: str = "float16"  # or uint8 (quantised, error <= 1/508)
    maps_per_shard: int | None = None  # None: a few MB of maps per shard object
    # selection
    full: bool = False
    limit: int | None = None
    dry_run: bool = False
    retry_errors: bool = False
    manifest: str | None = None
    include: tuple[str, ...] = ()  # globs, case-insensitive; `*` also matches `/`
    exclude: tuple[str, ...] = ()
    suffixes: tuple[str, ...] | None = None  # added to listing.IMAGE_SUFFIXES (Pillow must open them)
    # a dry run calls it with (reason, image_uri) of each object it would score, in URI order
    list_todo: TodoCallback | None = field(default=None, repr=False, compare=False)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES  # larger objects become error rows, unread
    # per-object limits: a hung read or decode becomes an error row (0 or None: no limit)
    decode_timeout_s: float | None = DEFAULT_DECODE_TIMEOUT_S
    read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S
    # storage (options apply to source, OUT and checkpoint unless the specific ones are given)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    source_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    out_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    checkpoint_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    fs_wrapper: FilesystemWrapper | None = field(default=None, repr=False)
    # engine: "ray" (Ray Data, the product), "local" (the same stages on threads in this
    # process; see engines/local.py) or "auto" (local for small runs without a cluster:
    # engines.choose_engine). The CLI defaults to "auto"; the API stays on "ray".
    engine: str = "ray"
    # Ray
    ray_address: str | None = None
    ray_init_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    # lease on OUT
    wait: bool | float = False  # False: refuse when locked; True: wait; seconds: wait that long
    lock_ttl_s: float = 300.0
    heartbeat_s: float | None = None
    # staging / commit
    stage_rows: int = 2048  # rows per durable staging part (resume granularity)
    stage_seconds: float = 30.0
    max_rows_per_file: int = 1_000_000
    # progress(done_rows, total_rows), called from the driver as rows are staged
    progress: ProgressCallback | None = field(default=None, repr=False, compare=False)
    # notify(line): what the person running the scan should read as it happens (resuming a
    # run, starting the engine); the CLI prints it, the API default drops it
    notify: NotifyCallback | None = field(default=None, repr=False, compare=False)

    def public(self) -> dict[str, Any]:
        """The options as recorded in the run record: no credentials, no callables."""
        hidden = {"storage_options", "source_storage_options", "out_storage_options",
                  "checkpoint_storage_options", "fs_wrapper", "progress", "notify", "ray_init_kwargs",
                  "list_todo"}
        # Not asdict(self): it deep-copies the callbacks too, and the CLI's hold a terminal.
        clean = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
                 if f.name not in hidden}
        for key in ("weights", "manifest", "ray_address"):
            if isinstance(clean.get(key), str):
                clean[key] = redact(clean[key])
        clean["storage_options"] = public_options(self.storage_options)
        return clean

    def storage_for(self, which: str) -> dict[str, Any]:
        """Storage options of ``which`` ('source', 'out' or 'checkpoint'): its own if given,
        else the shared ``storage_options``."""
        specific = getattr(self, f"{which}_storage_options")
        return dict(self.storage_options if specific is None else specific)
