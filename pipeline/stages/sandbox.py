"""The decode sandbox: images are decoded in a child process, one object at a time, so a file
that crashes the decoder (a native fault, an OOM kill) or hangs it costs one error row, not
the decode task, the run, and every night after it.

    decode task / thread --(request: size, pixel limit, fault, bytes)--> child process
                         <--(ok: width, height, uint8 pixels | error: one line)--

Run as this file, the child only decodes bytes it is sent; run as reader_child.py, it also
serves OP_READ_GROUP requests: it reads the objects itself and decodes them
(stages/reader.py), so that a read which kills its process costs the child too. The child
is a fresh interpreter (``python <this file>``, not a fork: decode tasks run inside Ray
workers, whose threads and s3fs event loops do not survive a fork).
Children are pooled per process and reused across batches and runs; one that died or timed
out is replaced on the next request. A child whose parent dies reads end-of-file and exits.

This file is also the child's program, so at module level it imports only the standard
library, numpy and the decoder; the parent's errors (:class:`SandboxUnavailable`,
:class:`DecoderFailed`) live in pipeline/errors.py and are imported where they are raised.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np

from vip2scan.model.images import DecodeError, decode_image

# request: image size, pixel limit, fault action, blob length; reply: kind, width, height
# (or, for an error, the length of its text in the width slot).
REQUEST = struct.Struct("<IQBQ")
REPLY = struct.Struct("<BII")
# ok: pixels follow; error: the file's one-line reason follows (an error row); failed: the
# decoder itself misbehaved (a bug, not the file's fault), which fails the task as it did
# before the sandbox, instead of writing an error row for every object.
REPLY_OK, REPLY_ERROR, REPLY_FAILED = 0, 1, 2
MAX_REPLY_TEXT = 1 << 16
# Test-only fault actions the parent asks for (pipeline/faults.py decides which object).
FAULT_NONE, FAULT_KILL, FAULT_HANG = 0, 1, 2
# In the fault slot: the request is a group to read and decode (stages/reader.py), and its
# length is that of the group's description.
OP_READ_GROUP = 8
HANG_S = 24 * 3600.0
READY = b"R"  # the child's first byte: imports done, requests welcome
STARTUP_S = 120.0  # a cold interpreter on a loaded node takes a few seconds at most
PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged process


class DecoderDied(Exception):
    """The child died while decoding the object; the message is the error row's."""


class DecoderTimedOut(DecoderDied):
    """The child did not answer in time (it was killed); the message is the error row's."""


def death_reason(returncode: int | None) -> str:
    """'SIGKILL', 'SIGSEGV', 'exit 3' ... for a child's return code."""
    if returncode is None:
        return "unknown"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"


class Sandbox:
    """One child process that decodes on request; replaced after a death or a time-out."""

    def __init__(self, argv: list[str] | None = None) -> None:
        # -P: do not put this file's folder (pipeline/stages) first on the child's sys.path.
        self.argv = argv or [sys.executable, "-P", os.path.abspath(__file__)]
        self.proc: subprocess.Popen | None = None

    def started(self) -> subprocess.Popen:
        """The live child, started afresh when there is none or it died while idle."""
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._start()
        return self.proc

    def _start(self) -> subprocess.Popen:
        # The child sees the modules this process sees (a reader unpickles the filesystem
        # wrapper it is given), ahead of whatever PYTHONPATH already said.
        path = os.pathsep.join([p for p in sys.path if p] +
                               [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0, close_fds=True,
                                     env={**os.environ, "PYTHONPATH": path})
        for stream in (self.proc.stdin, self.proc.stdout):
            _widen_pipe(stream.fileno())
        try:
            if wait_readable(self.proc.stdout, STARTUP_S) and \
                    read_exact(self.proc.stdout, len(READY)) == READY:
                return self.proc
        except EOFError:
            pass
        from vip2scan.pipeline.errors import SandboxUnavailable  # not at the top: see the docstring

        proc = self.proc
        self.close()
        raise SandboxUnavailable(f"the decode sandbox did not start ({self.argv[0]}): "
                                 f"{death_reason(proc.returncode)}")

    def close(self) -> None:
        """Stop the child (kill: it may be stuck in native code) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def decode(self, blob: bytes, out: np.ndarray, max_image_pixels: int, timeout_s: float | None,
               fault: int = FAULT_NONE) -> tuple[int, int]:
        """Decode ``blob`` into ``out`` (uint8 [size, size, 3]); (width, height).

        Raises DecodeError for a file that is not a usable image, DecoderDied when the child
        died or did not answer within ``timeout_s`` (the child is then gone: the next call
        starts a fresh one)."""
        proc = self.started()
        try:
            write_all(proc.stdin, REQUEST.pack(out.shape[0], max_image_pixels, fault, len(blob)))
            write_all(proc.stdin, blob)
            if not wait_readable(proc.stdout, timeout_s):
                self.close()
                raise DecoderTimedOut(f"decode timed out after {timeout_s:g} s")
            kind, first, second = REPLY.unpack(read_exact(proc.stdout, REPLY.size))
            if kind == REPLY_OK:
                read_into(proc.stdout, memoryview(out).cast("B"))
                return first, second
            from vip2scan.pipeline.errors import DecoderFailed  # not at the top: see the docstring

            if kind not in (REPLY_ERROR, REPLY_FAILED) or first > MAX_REPLY_TEXT:
                raise DecoderFailed(f"decode sandbox protocol error (reply {kind}, {first})")
            text = read_exact(proc.stdout, first).decode("utf-8", "replace")
            if kind == REPLY_FAILED:
                raise DecoderFailed(text)
            raise DecodeError(text)
        except (DecodeError, DecoderDied):
            raise
        except (BrokenPipeError, EOFError, ConnectionResetError):
            proc.wait()
            reason = death_reason(proc.returncode)
            self.close()
            raise DecoderDied(f"decoder process died: {reason}") from None
        except BaseException:
            # Interrupted mid-request (Ctrl-C, a cancelled task): the child may still answer
            # this request later, and that answer must never be read as the next object's.
            self.close()
            raise


def _widen_pipe(fd: int) -> None:
    """Let one write carry a whole 224 px image (150 KB) instead of 64 KB per wake-up."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:
        pass  # not Linux, or above the system's limit: the default still works


def wait_readable(stream, timeout_s: float | None) -> bool:
    """True once the child has answered (or closed its end), False after ``timeout_s``."""
    deadline = None if not timeout_s or timeout_s <= 0 else time.monotonic() + timeout_s
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ready, _, _ = select.select([stream], [], [], left)
        except InterruptedError:
            continue
        if ready:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def write_all(stream, data) -> None:
    """Write all of ``data`` to an unbuffered pipe (a raw write may take only part of it)."""
    view = memoryview(data).cast("B")
    while len(view):
        view = view[stream.write(view):]


def read_exact(stream, n: int) -> bytearray:
    """``n`` bytes (a bytearray: the decoder takes it as is, with no copy of a large blob)."""
    buf = bytearray(n)
    read_into(stream, memoryview(buf))
    return buf


def read_into(stream, view: memoryview) -> None:
    """Fill ``view`` from ``stream``; EOFError when the other side is gone first."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            raise EOFError
        got += n


class SandboxPool:
    """Idle sandboxes of this process: a decode thread (or Ray task) borrows one per batch,
    so there are as many children as batches decoding at once, kept warm between them."""

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = argv  # the children's program (None: this file, decode only)
        self.idle: list[Sandbox] = []
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def acquire(self) -> Sandbox:
        with self.lock:
            if self.pid != os.getpid():  # a forked copy: those children are not ours
                self.idle, self.pid = [], os.getpid()
            return self.idle.pop() if self.idle else Sandbox(self.argv)

    def release(self, sandbox: Sandbox) -> None:
        with self.lock:
            self.idle.append(sandbox)

    def close_all(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for sandbox in idle:
            sandbox.close()


POOL = SandboxPool()
atexit.register(POOL.close_all)


# ------------------------------------------------------------------ the child's side
def serve(requests, replies, handlers: dict | None = None) -> None:
    """The child's loop: decode each request until the parent closes the pipe; a request
    whose fault slot names one of ``handlers`` (e.g. OP_READ_GROUP) goes to that handler."""
    handlers = handlers or {}
    from PIL import Image

    write_all(replies, READY)
    while True:
        try:
            size, max_pixels, fault, length = REQUEST.unpack(read_exact(requests, REQUEST.size))
            blob = read_exact(requests, length)
        except EOFError:
            return
        if fault in handlers:
            handlers[fault](bytes(blob), size, max_pixels, replies)
            continue
        if fault == FAULT_KILL:
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == FAULT_HANG:
            time.sleep(HANG_S)
        Image.MAX_IMAGE_PIXELS = max(max_pixels, 1)
        try:
            pixels, width, height = decode_image(blob, size, max_pixels)
            if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8:
                # The parent reads exactly size x size x 3 bytes: anything else would shift
                # every later reply.
                raise TypeError(f"the decoder returned {pixels.dtype} {pixels.shape} "
                                f"for size {size}")
        except Exception as exc:  # noqa: BLE001 - the file's reason, or the decoder's bug
            kind = REPLY_ERROR if isinstance(exc, DecodeError) else REPLY_FAILED
            text = str(exc) if kind == REPLY_ERROR else f"decoder failed: {type(exc).__name__}: {exc}"
            data = " ".join(text.split()).encode("utf-8", "replace")[:MAX_REPLY_TEXT]
            write_all(replies, REPLY.pack(kind, len(data), 0) + data)
            continue
        write_all(replies, REPLY.pack(REPLY_OK, width, height))
        write_all(replies, np.ascontiguousarray(pixels, dtype=np.uint8))


def main(handlers: dict | None = None) -> None:
    """Entry point of the child: the protocol on a private copy of stdout; stray prints of
    native code go to stderr instead, so they cannot corrupt a reply."""
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:  # the OOM killer takes this child, which holds the object, before its parent
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:
        pass
    serve(os.fdopen(0, "rb", buffering=0), replies, handlers)


if __name__ == "__main__":
    main()
