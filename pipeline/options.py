"""ScanOptions: everything a scan can be told, as the specs of specs.py plus storage and callbacks.

    ScanOptions(batch_size=16, maps="anomalous")             # flat settings, by their flag names
    ScanOptions(map_spec=MapSpec(map_size=128), full=True)   # or whole specs, with settings on top

Each setting lives in one spec (``opts.engine_spec.batch_size``, ``opts.map_spec.maps``) and is
validated there. Storage options and callbacks are not settings: they are never recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vip2scan.model.factory import ModelSpec

from .specs import (EngineSpec, LimitSpec, MapSpec, RunSpec, SelectionSpec, ThresholdSpec,
                    build_specs, spec_settings)
from .storage.location import FilesystemWrapper
from .storage.redaction import public_options, redact

ProgressCallback = Callable[[int, int], None]
NotifyCallback = Callable[[str], None]
TodoCallback = Callable[[str, str], None]  # (reason, image_uri)


@dataclass(init=False)
class ScanOptions:
    """The settings of a scan (one spec per concept) and how it reaches storage and reports.

    ``storage_options`` apply to source, OUT and checkpoint unless the specific ones are given;
    ``progress(done_rows, total_rows)`` is called as rows are staged; ``notify(line)`` gets what
    the person running the scan should read as it happens (the CLI prints it); a dry run calls
    ``list_todo(reason, image_uri)`` for each object it would score, in URI order.
    """

    model_spec: ModelSpec
    map_spec: MapSpec
    selection_spec: SelectionSpec
    engine_spec: EngineSpec
    limit_spec: LimitSpec
    threshold_spec: ThresholdSpec
    run_spec: RunSpec
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    source_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    out_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    checkpoint_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    fs_wrapper: FilesystemWrapper | None = field(default=None, repr=False)
    progress: ProgressCallback | None = field(default=None, repr=False, compare=False)
    notify: NotifyCallback | None = field(default=None, repr=False, compare=False)
    list_todo: TodoCallback | None = field(default=None, repr=False, compare=False)

    def __init__(self, *, model_spec: ModelSpec | None = None, map_spec: MapSpec | None = None,
                 selection_spec: SelectionSpec | None = None, engine_spec: EngineSpec | None = None,
                 limit_spec: LimitSpec | None = None, threshold_spec: ThresholdSpec | None = None,
                 run_spec: RunSpec | None = None, storage_options: dict[str, Any] | None = None,
                 source_storage_options: dict[str, Any] | None = None,
                 out_storage_options: dict[str, Any] | None = None,
                 checkpoint_storage_options: dict[str, Any] | None = None,
                 fs_wrapper: FilesystemWrapper | None = None,
                 progress: ProgressCallback | None = None, notify: NotifyCallback | None = None,
                 list_todo: TodoCallback | None = None, **settings: Any):
        given = {"model_spec": model_spec, "map_spec": map_spec, "selection_spec": selection_spec,
                 "engine_spec": engine_spec, "limit_spec": limit_spec,
                 "threshold_spec": threshold_spec, "run_spec": run_spec}
        values = {**build_specs(given, settings),
                  "storage_options": dict(storage_options or {}),
                  "source_storage_options": source_storage_options,
                  "out_storage_options": out_storage_options,
                  "checkpoint_storage_options": checkpoint_storage_options,
                  "fs_wrapper": fs_wrapper, "progress": progress, "notify": notify,
                  "list_todo": list_todo}
        for name, value in values.items():
            setattr(self, name, value)

    def replace(self, **changes: Any) -> "ScanOptions":
        """A copy with ``changes``: specs, storage, callbacks or flat settings."""
        current = {name: getattr(self, name) for name in self.__dataclass_fields__}
        specs = {k: v for k, v in changes.items() if k in current}
        return ScanOptions(**{**current, **specs},
                           **{k: v for k, v in changes.items() if k not in current})

    def specs(self) -> tuple[Any, ...]:
        return (self.model_spec, self.map_spec, self.selection_spec, self.engine_spec,
                self.limit_spec, self.threshold_spec, self.run_spec)

    def public(self) -> dict[str, Any]:
        """The settings as the run record's ``config`` holds them: flat, by name, no credentials
        and no callables (the checkpoint is recorded on its own)."""
        clean: dict[str, Any] = {}
        for spec in self.specs():
            clean.update(spec_settings(spec))
        clean.pop("checkpoint", None)
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

