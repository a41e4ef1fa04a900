"""Request and byte accounting: what a run asked of its object store, and what that costs.

Every S3 client the pipeline builds reports each attempt it sends (retries included: they are
billed too) to this process's counters, by request class:

    LIST    ListObjects, ListObjectsV2, ListObjectVersions, ListMultipartUploads, ListParts
    HEAD    HeadObject, HeadBucket
    GET     GetObject
    PUT     PutObject, UploadPart, UploadPartCopy, CopyObject, CreateMultipartUpload,
            CompleteMultipartUpload, CreateBucket
    DELETE  DeleteObject, DeleteObjects (one request however many keys), AbortMultipartUpload
    OTHER   anything else (GetBucketLocation, ...), priced like GET

and bytes: a GET answer's Content-Length (bytes read) and a PutObject/UploadPart body (bytes
written). The hook is botocore's ``before-send`` event, which fires once per attempt on the
wire, after retries.py's store-health check (a request refused locally is not counted), and
``response-received`` for a GET's size. Local files are not counted (no request is billed),
nor are Parquet reads through pyarrow's native S3 client (arrow_fs.py: the diff and the
snapshot build read OUT's own score and snapshot files that way; it has no request hook).

Counts are per process, like retries (retries.py): a stage reports what its process counted
since its last report as ``io_*`` columns of its result rows (:func:`report_io`; the whole
count on the first row, so the driver sums exact integers), and the driver adds its own
(:func:`take_io`). What a Ray worker counts after its last result batch (say, a work-list read
task whose rows were decoded in another process) is not reported.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

REQUEST_CLASSES = ("LIST", "HEAD", "GET", "PUT", "DELETE", "OTHER")
_CLASS_OF_OPERATION = {
    **dict.fromkeys(("ListObjects", "ListObjectsV2", "ListObjectVersions", "ListMultipartUploads",
                     "ListParts", "ListBuckets"), "LIST"),
    **dict.fromkeys(("HeadObject", "HeadBucket"), "HEAD"),
    "GetObject": "GET",
    **dict.fromkeys(("PutObject", "UploadPart", "UploadPartCopy", "CopyObject",
                     "CreateMultipartUpload", "CompleteMultipartUpload", "CreateBucket"), "PUT"),
    **dict.fromkeys(("DeleteObject", "DeleteObjects", "AbortMultipartUpload"), "DELETE"),
}
_BODY_OPERATIONS = frozenset({"PutObject", "UploadPart"})  # requests that upload object data

# AWS S3 Standard, us-east-1, list prices in USD per 1,000 requests, as we took them on
# PRICES_AS_OF (not re-checked online from here: check https://aws.amazon.com/s3/pricing/).
# PUT, COPY, POST, LIST: 0.005; GET, SELECT, HEAD and all other requests: 0.0004; DELETE and
# AbortMultipartUpload: free. Data transfer in is free; transfer out is not priced here
# (free within a region, which is where a scan should run).
PRICES_AS_OF = "2026-12-02"
PRICE_SOURCE = "AWS S3 Standard us-east-1 list prices"
USD_PER_1000_REQUESTS = {"LIST": 0.005, "PUT": 0.005, "GET": 0.0004, "HEAD": 0.0004,
                         "OTHER": 0.0004, "DELETE": 0.0}

COLUMN_PREFIX = "io_"


def request_class(operation: str) -> str:
    """LIST, HEAD, GET, PUT, DELETE or OTHER for an S3 API operation name."""
    return _CLASS_OF_OPERATION.get(operation, "OTHER")


@dataclass
class IoCounts:
    """Requests by class and bytes moved (one process's, or a run's summed)."""

    list: int = 0
    head: int = 0
    get: int = 0
    put: int = 0
    delete: int = 0
    other: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def __add__(self, other: "IoCounts") -> "IoCounts":
        return IoCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                           for f in fields(self)})

    def requests(self) -> dict[str, int]:
        return {c: getattr(self, c.lower()) for c in REQUEST_CLASSES}

    def total_requests(self) -> int:
        return sum(self.requests().values())

    def cost_usd(self) -> float:
        """What these requests cost at :data:`USD_PER_1000_REQUESTS` (transfer not included)."""
        return sum(n * USD_PER_1000_REQUESTS[c] / 1000.0 for c, n in self.requests().items())

    def record(self) -> dict[str, Any]:
        """The run record's (and the scan summary's) storage fields."""
        return {"requests": self.requests(), "storage_bytes_read": self.bytes_read,
                "storage_bytes_written": self.bytes_written,
                "request_cost_usd": round(self.cost_usd(), 6),
                "prices": f"{PRICE_SOURCE} as of {PRICES_AS_OF}"}

    def empty(self) -> bool:
        return not any(asdict(self).values())

    @classmethod
    def from_record(cls, io: dict[str, Any]) -> "IoCounts":
        """The counts of a run record's (or summary's) ``io`` (zeros where absent)."""
        requests = io.get("requests") or {}
        return cls(**{c.lower(): int(requests.get(c, 0) or 0) for c in REQUEST_CLASSES},
                   bytes_read=int(io.get("storage_bytes_read", 0) or 0),
                   bytes_written=int(io.get("storage_bytes_written", 0) or 0))

    @classmethod
    def from_table(cls, table: Any) -> "IoCounts":
        """Sum the ``io_*`` columns of a result batch (a pyarrow table); absent ones are 0."""
        import pyarrow.compute as pc

        found = {}
        for f in fields(cls):
            name = COLUMN_PREFIX + f.name
            if name in table.column_names:
                found[f.name] = int(pc.sum(table.column(name)).as_py() or 0)
        return cls(**found)


def cost_per_million_images(counts: IoCounts, images: int) -> float | None:
    """Request cost scaled to a million images like these (None without images)."""
    return counts.cost_usd() * 1e6 / images if images > 0 else None


def per_thousand_images(io: dict[str, Any], images: int) -> dict[str, Any]:
    """A run's storage figures scaled per 1,000 images (the bench's ``storage`` section)."""
    counts = IoCounts.from_record(io)
    scale = 1000.0 / images if images > 0 else None
    return {"requests_per_1000_images": None if scale is None else
            {c: n * scale for c, n in counts.requests().items()},
            "bytes_written_per_1000_images": None if scale is None else counts.bytes_written * scale,
            "bytes_read_per_1000_images": None if scale is None else counts.bytes_read * scale,
            "request_cost_usd": counts.cost_usd(),
            "usd_per_million_images": cost_per_million_images(counts, images),
            "prices": f"{PRICE_SOURCE} as of {PRICES_AS_OF}"}


def cost_line(counts: IoCounts, images: int) -> str:
    """One line for a summary: requests, bytes, cost and its price basis."""
    shown = ", ".join(f"{c} {n}" for c, n in counts.requests().items() if n or c != "OTHER")
    per_million = cost_per_million_images(counts, images)
    scaled = f", {per_million:.2f} USD per million images" if per_million is not None else ""
    return (f"storage requests: {shown}; {_size(counts.bytes_read)} read, "
            f"{_size(counts.bytes_written)} written; {counts.cost_usd():.4f} USD{scaled} "
            f"({PRICE_SOURCE} as of {PRICES_AS_OF})")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------- per process

class _Counts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = IoCounts()

    def add(self, name: str, n: int) -> None:
        with self._lock:
            setattr(self._counts, name, getattr(self._counts, name) + n)

    def take(self) -> IoCounts:
        with self._lock:
            taken, self._counts = self._counts, IoCounts()
        return taken


COUNTS = _Counts()


def take_io() -> IoCounts:
    """What this process sent since it last reported (and resets the counts)."""
    return COUNTS.take()


def report_io(batch: dict[str, np.ndarray], n: int) -> None:
    """Add this process's counts to ``batch``'s ``io_*`` columns, on its first row (the
    driver sums the columns). A batch without rows carries nothing: the counts wait."""
    if n <= 0:
        return
    counts = take_io()
    for f in fields(IoCounts):
        name = COLUMN_PREFIX + f.name
        column = np.zeros(n, dtype=np.int64)
        if name in batch:
            column += np.asarray(batch[name], dtype=np.int64)
        column[0] += getattr(counts, f.name)
        batch[name] = column


# --------------------------------------------------------------------------- botocore hooks

def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return value


def _body_length(request: Any) -> int:
    headers = getattr(request, "headers", None)
    # aws-chunked bodies (flexible checksums) carry the payload size apart.
    for name in ("x-amz-decoded-content-length", "content-length"):
        value = _header(headers, name)
        if value is not None:
            return int(value)
    body = getattr(request, "body", None)
    return len(body) if isinstance(body, (bytes, bytearray, memoryview)) else 0


def count_request(request: Any = None, event_name: str = "", **_: Any) -> None:
    """botocore ``before-send``: one attempt of ``event_name``'s operation on the wire."""
    operation = event_name.rsplit(".", 1)[-1]
    COUNTS.add(request_class(operation).lower(), 1)
    if operation in _BODY_OPERATIONS and request is not None:
        COUNTS.add("bytes_written", _body_length(request))


def count_response(response_dict: Any = None, event_name: str = "", **_: Any) -> None:
    """botocore ``response-received``: the bytes of a GET's answer."""
    if not event_name.endswith(".GetObject") or not response_dict:
        return
    if int(response_dict.get("status_code") or 0) in (200, 206):
        length = _header(response_dict.get("headers"), "content-length")
        if length is not None:
            COUNTS.add("bytes_read", int(length))


def instrument(emitter: Any) -> None:
    """Register the counting hooks on a session's or client's event emitter (only once:
    registering again, or on a client copied from a counted session, does nothing)."""
    register = getattr(emitter, "register", None)
    if register is None:
        return
    register("before-send.s3", count_request, unique_id="vip2scan-accounting-send")
    register("response-received.s3", count_response, unique_id="vip2scan-accounting-response")


def instrument_filesystem(fs: Any) -> None:
    """Count the requests of an s3fs filesystem: its session's future clients, and its client
    if it already has one (a client copies its session's hooks when it is created)."""
    session = getattr(fs, "session", None)
    if session is not None:
        instrument(session)
    client = getattr(fs, "_s3", None)
    if client is not None:
        instrument(client.meta.events)
