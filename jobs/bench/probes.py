"""What `vip2scan bench` measures with: the bare model, process memory and CPU, the environment.

These measure; they never change what a scan computes. The bare-model figure is the yardstick
the pipeline is compared against (efficiency = pipeline images/s / bare images/s), so it is
measured the way the pipeline's inference stage would run at best: uint8 batches already in
(pinned, on CUDA) memory, the same batch size and device, warmed up, torch on all cores.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

WARMUP_BATCHES = 2
# A warm measurement shorter than this is dominated by timer and scheduling noise.
MIN_MEASURE_S = 3.0
RSS_SAMPLE_INTERVAL_S = 0.2


@dataclass
class BareModelResult:
    """Throughput of the detector alone on in-memory uint8 batches."""

    images_per_s: float
    ms_per_image: float
    cpu_ms_per_image: float  # CPU time, all threads: robust to other load, unlike wall time
    images: int
    seconds: float
    batch_size: int
    device: str
    torch_threads: int
    autocast: str | None
    channels_last: bool
    compiled: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[int]:
    """Run with ``count`` intra-op threads (default: every core), restoring the old setting."""
    import torch

    before = torch.get_num_threads()
    wanted = count or os.cpu_count() or 1
    torch.set_num_threads(wanted)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def measure_bare_model(detector: Any, batch_size: int, *, device: str = "cpu",
                       min_seconds: float = MIN_MEASURE_S, max_images: int | None = None,
                       threads: int | None = None, channels_last: bool = False,
                       compile_model: bool = False, seed: int = 0) -> BareModelResult:
    """Images/s of ``detector(uint8 [B,3,S,S])`` with inputs already in host memory.

    Inputs live on the host (pinned on CUDA) and are copied with ``non_blocking`` inside the
    detector, as the pipeline's actor does, so the figure includes the host-to-device copy
    but no decoding, reading or writing. Outputs are moved to the host (the actor must do
    that too) so asynchronous CUDA work is really finished inside the timed region.
    """
    import torch

    # The pipeline's own device preparation, so the yardstick runs the model as a scan does.
    from vip2scan.pipeline.stages.infer import prepare_for_device

    size = int(detector.image_size)
    generator = torch.Generator().manual_seed(seed)
    # Two distinct batches, alternated, so no cache sees the same input twice in a row.
    batches = [torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
               for _ in range(2)]
    if channels_last:
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    if device.startswith("cuda"):
        batches = [b.pin_memory() for b in batches]  # last: a layout change would unpin
    run = prepare_for_device(detector, channels_last=channels_last, compile_model=compile_model)

    def step(i: int) -> None:
        score, amap = run(batches[i % 2])
        score.to("cpu", non_blocking=False)
        amap.to("cpu", non_blocking=False)

    with torch_threads(threads) as used_threads, torch.inference_mode():
        for i in range(WARMUP_BATCHES):
            step(i)
        _synchronise(device)
        done = 0
        cpu_start = time.process_time()  # every thread of this process: torch's pool included
        start = time.perf_counter()
        while True:
            step(done // batch_size)
            done += batch_size
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds or (max_images is not None and done >= max_images):
                break
        _synchronise(device)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    amp = getattr(detector, "amp", None)
    return BareModelResult(
        images_per_s=done / elapsed, ms_per_image=1000.0 * elapsed / done,
        cpu_ms_per_image=1000.0 * cpu / done, images=done,
        seconds=elapsed, batch_size=batch_size, device=device, torch_threads=used_threads,
        autocast=("bf16" if amp == "auto" else amp) if device.startswith("cuda") else None,
        channels_last=channels_last, compiled=compile_model,
    )


# --------------------------------------------------------------------------- memory and CPU

def _is_ray_worker(proc: Any) -> bool:
    """Ray task/actor workers show as 'ray::<Name>' once they run user code."""
    import psutil

    try:
        name = proc.name()
        if name.startswith("ray::"):
            return True
        cmdline = proc.cmdline()
    except psutil.Error:  # the process may have exited between calls
        return False
    return bool(cmdline) and (cmdline[0].startswith("ray::")
                              or any(part.endswith("default_worker.py") for part in cmdline))


# The decode sandbox (stages/sandbox.py) and the reader process (stages/reader_child.py):
# the child processes where the pixels are really read and decoded.
DECODE_CHILD_SCRIPTS = ("sandbox.py", "reader_child.py")


def _is_decode_child(proc: Any) -> bool:
    """A child running one of DECODE_CHILD_SCRIPTS."""
    import psutil

    try:
        return any(os.path.basename(part) in DECODE_CHILD_SCRIPTS for part in proc.cmdline())
    except psutil.Error:  # exited meanwhile
        return False


@dataclass
class ProcessFigures:
    """What the sampler saw. Memory in MiB (None: nothing of that kind ran); CPU in seconds
    (user + system) used while sampling by the driver and by all its descendants except the
    excluded ones (the moto server plays the object store, it is not the pipeline)."""

    driver_peak_rss_mb: float | None = None
    workers_peak_rss_mb: float | None = None  # peak of the sum over Ray workers alive at once
    worker_max_rss_mb: float | None = None  # the largest single worker seen
    # RSS less shared pages (file-backed and shared memory, e.g. the object store's mmap,
    # which a worker's RSS accumulates as it touches more of it): what a leak would grow.
    driver_peak_private_mb: float | None = None
    workers_peak_private_mb: float | None = None
    workers_seen: int = 0
    cpu_s: float | None = None
    cpu_s_by_role: dict[str, float] = field(default_factory=dict)  # see process_role
    samples: int = 0
    # The sampler's own thread (in the driver): taken out of the driver's CPU, it is the probe.
    sampler_cpu_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_s(proc: Any) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def cpu_seconds_of(pids: set[int]) -> float:
    """User + system CPU seconds of these processes so far (those gone are skipped)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += _cpu_s(psutil.Process(pid))
    return total


def process_role(proc: Any, driver_pid: int) -> str:
    """Which part of the run a process is, for the CPU profile: 'driver', 'ray::<task or
    actor>' for Ray workers (decode/write tasks, the inference actor, Ray Data's own actors),
    or 'system:<name>' for Ray's system processes (raylet, GCS, agents), which cost CPU on a
    small node too."""
    import psutil

    if proc.pid == driver_pid:
        return "driver"
    try:
        name = proc.name()
        title = name if name.startswith("ray::") else (proc.cmdline() or [name])[0]
    except psutil.Error:  # exited meanwhile
        return "other"
    if title.startswith("ray::"):
        # 'ray::Class.method' while an actor runs a method: one role per actor (its start-up,
        # '.__init__', apart: it is paid once per scan, not per image).
        title = title.split(" ")[0]
        if not title.endswith(".__init__"):
            title = re.sub(r"\.\w+$", "", title)
        return title[:60]
    if "python" in os.path.basename(title):  # e.g. python .../dashboard/agent.py
        try:
            script = next((a for a in proc.cmdline()[1:] if a.endswith(".py")), title)
        except psutil.Error:  # exited meanwhile
            script = title
        return f"system:{os.path.basename(script)}"
    return f"system:{os.path.basename(title)}"


@dataclass
class ProcessSampler:
    """Samples the driver's and its Ray workers' RSS, and everyone's CPU time, in a thread.

    Workers are the driver's descendants named 'ray::*' (the bench starts its own local Ray;
    a cluster joined by address is not sampled). Shared pages of the object store count in
    every process that maps them, so the worker sum is an upper bound; what matters for the
    scale check is that it stays flat as the lake grows. CPU time of a process that exits
    between samples is counted up to its last sample (an undercount of at most one interval).
    """

    interval_s: float = RSS_SAMPLE_INTERVAL_S
    exclude_pids: set[int] = field(default_factory=set)
    # False for the local engine: a Ray this process started for something else (a test
    # session's) is then idle background, not part of the measured run.
    include_descendants: bool = True
    figures: ProcessFigures = field(default_factory=ProcessFigures)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _seen_workers: set[int] = field(default_factory=set)
    _cpu_last: dict[int, float] = field(default_factory=dict)
    _roles: dict[int, str] = field(default_factory=dict)
    _cpu_by_role: dict[str, float] = field(default_factory=dict)

    def _descendants(self, me: Any) -> list[Any]:
        # Descendants only: other users of the machine may run Ray clusters of their own.
        if not self.include_descendants:
            # The local engine's decode sandbox children do its decoding: they count.
            return [p for p in me.children(recursive=False) if _is_decode_child(p)]
        return [p for p in me.children(recursive=True) if p.pid not in self.exclude_pids]

    def _note_cpu(self, proc: Any, first: bool, driver_pid: int) -> None:
        cpu = _cpu_s(proc)
        role = process_role(proc, driver_pid)
        if role == "ray::IDLE" and proc.pid in self._roles:
            role = self._roles[proc.pid]  # idle now: the time since the last sample was its last task's
        self._roles[proc.pid] = role
        # Born after the start: all of its CPU counts. A worker runs different tasks over its
        # life (decode, repartition), so each interval's CPU goes to the task it runs then.
        before = self._cpu_last.get(proc.pid, cpu if first else 0.0)
        self._cpu_last[proc.pid] = cpu
        self._cpu_by_role[role] = self._cpu_by_role.get(role, 0.0) + cpu - before

    def sample_once(self, first: bool = False) -> None:
        import psutil

        me = psutil.Process()
        mb = 1024.0 * 1024.0
        figures = self.figures
        mine = me.memory_info()
        figures.driver_peak_rss_mb = max(figures.driver_peak_rss_mb or 0.0, mine.rss / mb)
        figures.driver_peak_private_mb = max(figures.driver_peak_private_mb or 0.0,
                                             (mine.rss - getattr(mine, "shared", 0)) / mb)
        self._note_cpu(me, first, me.pid)
        total, private, largest, any_worker = 0.0, 0.0, 0.0, False
        for proc in self._descendants(me):
            try:
                self._note_cpu(proc, first, me.pid)
                if not _is_ray_worker(proc):
                    continue
                info = proc.memory_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss = info.rss / mb
            any_worker = True
            self._seen_workers.add(proc.pid)
            total += rss
            private += (info.rss - getattr(info, "shared", 0)) / mb
            largest = max(largest, rss)
        if any_worker:
            figures.workers_peak_rss_mb = max(figures.workers_peak_rss_mb or 0.0, total)
            figures.worker_max_rss_mb = max(figures.worker_max_rss_mb or 0.0, largest)
            figures.workers_peak_private_mb = max(figures.workers_peak_private_mb or 0.0, private)
        figures.workers_seen = len(self._seen_workers)
        by_role = dict(self._cpu_by_role)
        if "driver" in by_role:
            by_role["driver"] = max(0.0, by_role["driver"] - figures.sampler_cpu_s)
        figures.cpu_s_by_role = by_role
        figures.cpu_s = sum(by_role.values())
        figures.samples += 1

    def _loop(self) -> None:
        import psutil

        start = time.thread_time()
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_once()
            except (psutil.Error, OSError):  # a process gone or hidden mid-sample: skip this sample
                pass
            self.figures.sampler_cpu_s = time.thread_time() - start

    def __enter__(self) -> "ProcessSampler":
        self._stop.clear()
        self.sample_once(first=True)
        self._thread = threading.Thread(target=self._loop, name="process-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample_once()


# --------------------------------------------------------------------------- environment

def environment(device: str, backbone: str, image_size: int, batch_size: int,
                engine: str) -> dict[str, Any]:
    """What the figures were measured on; every field is present, null when unknown."""
    import torch

    try:
        import ray

        ray_version: str | None = ray.__version__
    except ImportError:  # the GPU machine has no Ray unless it travels
        ray_version = None
    gpu_name = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(torch.device(device))
    try:
        import psutil

        memory_gb: float | None = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory_gb = None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_name": gpu_name,
        "torch_version": torch.__version__,
        "ray_version": ray_version,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": memory_gb,
        "load_average_1m": None if load is None else round(load, 2),
        # Settings that change CPU figures a lot on a small shared node (see the bench notes).
        "env": {name: os.environ.get(name) for name in
                ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "RAY_worker_niceness")},
        "device": device,
        "engine": engine,
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": batch_size,
    }
