"""Read + decode: manifest rows -> bytes -> uint8 RGB at the model size, or an error row.

Runs in CPU tasks (:class:`ReadDecode`), one batch of work-list rows at a time, in groups of
bounded size: each group is read (concurrently on object stores) and decoded with
:func:`vip2scan.model.images.decode_image`, the decoder training and eval use too, so a scan
scores the very pixels eval measured. A file that fails becomes a row with ``status='error'``
and a one-line, redacted ``error``; its pixel slot is left zero and the model never sees it.

Poison isolation: reading and decoding run in a child process (stages/reader.py), so an
object whose read or decode kills the process holding it (an OOM, a native crash) costs the
child, not this task or the driver. The objects a dead child held are read again alone in a
fresh one; one in flight at two deaths becomes the error row ``reader process died: SIGKILL``
(or ``decoder process died: ...``) and the batch goes on. Deaths are written to the run's
staging, so a restarted driver does not start counting afresh. Each read and each decode has
a time limit (``read_timeout_s``, ``decode_timeout_s``): a hung object becomes
``read timed out after N s`` / ``decode timed out after N s``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..specs import LimitSpec
from ..storage.accounting import report_io
from ..storage.retries import take_retries
from .fetch import error_text
from .reader import QUARANTINE_DEATHS, read_group
from .reader import READERS as POOL


@dataclass(frozen=True)
class DecodeSettings:
    """What a read+decode task needs (picklable; filesystems are built inside the worker)."""

    image_size: int
    limit_spec: LimitSpec = LimitSpec()
    storage_options: dict | None = field(default=None, repr=False)
    wrapper: Any = field(default=None, repr=False)
    faults: Any = field(default=None, repr=False)  # faults.FaultHooks (tests only)
    # Where deaths of the reader process are recorded (reader.DeathLog; None: nowhere), and
    # the objects in flight at earlier deaths of this run: image_uri -> [deaths, cause].
    deaths: Any = field(default=None, repr=False)
    suspects: dict | None = field(default=None, repr=False)


def read_groups(sizes: list[int | None], budget: int) -> list[list[int]]:
    """Indices in order, cut into groups whose known sizes sum to at most ``budget`` bytes
    (a group always takes at least one index; unknown sizes count as zero)."""
    groups: list[list[int]] = []
    current: list[int] = []
    held = 0
    for i, size in enumerate(sizes):
        size = int(size or 0)
        if current and held + size > budget:
            groups.append(current)
            current, held = [], 0
        current.append(i)
        held += size
    if current:
        groups.append(current)
    return groups


class ReadDecode:
    """map_batches callable: work-list rows -> rows + uint8 pixels (or an error)."""

    def __init__(self, settings: DecodeSettings):
        self.settings = settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = [str(u) for u in batch["image_uri"]]
        n = len(uris)
        size = self.settings.image_size
        pixels = np.zeros((n, size, size, 3), dtype=np.uint8)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        status = np.full(n, "ok", dtype=object)
        # "" rather than None: a column that is all None in one block would become Arrow's
        # null type there and string in the next; scores_table turns "" into null.
        error = np.full(n, "", dtype=object)
        read_bytes = np.zeros(n, dtype=np.int64)

        if self.settings.faults is not None:
            self.settings.faults.on_decode_batch()
            self.settings.faults.on_decode_uris(uris)
        limit = self.settings.limit_spec.max_object_bytes
        sizes = _listed_sizes(batch, n)
        read_s = decode_s = 0.0
        wanted = []
        for i in range(n):
            if sizes[i] is not None and limit and sizes[i] > limit:
                status[i] = "error"
                error[i] = error_text(f"object too large: {sizes[i]} bytes exceeds the limit of "
                                    f"{limit} bytes (not read)")
            else:
                wanted.append(i)
        suspects = self.settings.suspects or {}
        deaths = {uri: (int(seen), str(cause)) for uri, (seen, cause) in suspects.items()}
        fresh, alone = [], []
        for i in wanted:
            seen, cause = deaths.get(uris[i], (0, ""))
            if seen >= QUARANTINE_DEATHS:  # quarantined by earlier attempts: never read again
                status[i], error[i] = "error", error_text(cause)
            else:
                (alone if seen else fresh).append(i)
        budget = max(1, self.settings.limit_spec.max_batch_read_bytes)
        queue = deque([fresh[g] for g in group]
                      for group in read_groups([sizes[i] for i in fresh], budget))
        queue.extend([i] for i in alone)  # in flight at a death before: read alone
        sandbox = POOL.acquire()
        try:
            while queue:
                group = queue.popleft()
                got = read_group(sandbox, [uris[i] for i in group], self.settings,
                                 [pixels[i] for i in group])
                read_s += got.read_s
                decode_s += got.decode_s
                for k, answer in got.answers.items():
                    i = group[k]
                    read_bytes[i] = got.read_bytes.get(k, 0)
                    if isinstance(answer, str):
                        pixels[i] = 0
                        status[i], error[i] = "error", error_text(answer)
                    else:
                        width[i], height[i] = answer
                queue.extend([group[k]] for k in got.redo)
                if got.in_flight:
                    queue.extend(self._after_death([group[k] for k in got.in_flight], got.death,
                                                   uris, deaths, status, error, pixels))
        finally:
            POOL.release(sandbox)

        out = {name: batch[name] for name in batch}
        out.update(
            pixels=pixels, width=width, height=height, status=status.astype(str),
            error=error, read_bytes=read_bytes,
            # Stage timings travel as per-row shares so the driver can sum them.
            read_s=np.full(n, read_s / max(n, 1)), decode_s=np.full(n, decode_s / max(n, 1)),
            retries=np.full(n, take_retries() / max(n, 1)),  # this process's, for the record
        )
        report_io(out, n)  # this process's storage requests and bytes, for the record
        return out

    def _after_death(self, held: list[int], cause: str, uris: list[str], deaths: dict,
                     status: np.ndarray, error: np.ndarray, pixels: np.ndarray) -> list[list[int]]:
        """Count a death against the objects it held; those at QUARANTINE_DEATHS become error
        rows naming the cause, the others are read again alone (one that another object's
        death or the OOM killer's choice took down must not be blamed)."""
        if self.settings.deaths is not None:
            self.settings.deaths.record([uris[i] for i in held], cause)
        again = []
        for i in held:
            pixels[i] = 0
            seen = deaths.get(uris[i], (0, ""))[0] + 1
            deaths[uris[i]] = (seen, cause)
            if seen >= QUARANTINE_DEATHS:
                status[i], error[i] = "error", error_text(cause)
            else:
                again.append([i])
        return again


def _listed_sizes(batch: dict[str, np.ndarray], n: int) -> list[int | None]:
    """size_bytes per row from the listing (None where unknown)."""
    values = batch.get("size_bytes")
    if values is None:
        return [None] * n
    sizes: list[int | None] = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            sizes.append(None)
            continue
        sizes.append(None if np.isnan(number) else int(number))
    return sizes


def read_and_decode(batch: dict[str, np.ndarray], settings: DecodeSettings) -> dict[str, np.ndarray]:
    """Stateless form of :class:`ReadDecode` for Ray CPU tasks (``map_batches(fn, fn_kwargs=)``)."""
    return ReadDecode(settings)(batch)
