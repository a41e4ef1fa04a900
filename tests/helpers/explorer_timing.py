"""Open the lake explorer in headless Chromium and print its timings as JSON.

    .venv/bin/python tests/helpers/explorer_timing.py OUT            # the static export
    .venv/bin/python tests/helpers/explorer_timing.py OUT --serve    # and vip2scan explore OUT --serve

The static export must have been built (vip2scan explore OUT). The measuring code is
:mod:`vip2scan.jobs.bench.explorer_timing` (``vip2scan bench --analyst`` reports the same);
``served_explorer(out)`` here yields the running server's URL, for tests.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def served_explorer(out: Path | str, *flags: str, timeout: float = 300) -> Iterator[str]:
    """``vip2scan explore OUT --serve --port 0`` in a subprocess: yields its URL; Ctrl-C at the end."""
    from vip2scan.jobs.bench.explorer_timing import served_explorer as serving

    with serving(out, *flags, timeout=timeout) as (url, _):
        yield url


def main(argv: list[str]) -> None:
    from vip2scan.jobs.bench.explorer_timing import explorer_timings

    print(json.dumps(explorer_timings(Path(argv[0]), served="--serve" in argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
