"""Servers the tests start for real on 127.0.0.1: free ports, and a `ray start --head` with its
own temp dir and ports for tests that submit jobs (the moto S3 server is in conftest.py).

The head is stopped by signalling the `ray start --block` process we started (never `ray stop`, which
would stop every Ray instance on the machine, other test sessions' included).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHeadProcess:
    gcs: str  # host:port for ray.init / --ray-address
    dashboard: str  # http://host:port for job submission
    temp_dir: Path


@contextlib.contextmanager
def ray_head_process(temp_dir: Path, env: dict[str, str], num_cpus: int = 2,
                     start_timeout_s: float = 120) -> Iterator[RayHeadProcess]:
    """Start a head node with a dashboard on 127.0.0.1 and stop it (and its children) after.

    ``temp_dir`` should be short (Ray's socket paths are length-limited); it is removed after.
    """
    gcs_port, dash_port = free_port(), free_port()
    command = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
               "--num-cpus", str(num_cpus),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dash_port),
               "--dashboard-agent-listen-port", str(free_port()),
               "--dashboard-agent-grpc-port", str(free_port()),
               "--ray-client-server-port", str(free_port()),
               "--metrics-export-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()), "--temp-dir", str(temp_dir)]
    log_path = temp_dir / "ray-start.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    dashboard = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.time() + start_timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{dashboard}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # answering, even if it wants a token
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray head did not start: {log_path.read_text()[-2000:]}")
                time.sleep(1)
        yield RayHeadProcess(f"127.0.0.1:{gcs_port}", dashboard, temp_dir)
    finally:
        # `ray start --block` stops its own node on SIGTERM; the node's processes share the
        # process group we created (start_new_session), so anything left is ours to kill.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
