"""ObjectFilter over an Arrow array of keys: the same verdicts, a batch at a time.

Planning a lake of tens of millions of objects cannot afford a Python call per key, so the
globs become one RE2 pattern each (``pyarrow.compute.match_substring_regex``) and the suffixes
``ends_with`` on the ASCII-lowercased keys. Keys that are not ASCII take the per-object path
(``ObjectFilter.verdict``, ``suffix_key``): Arrow's lowering mirrors Python's ``str.lower`` only
for ASCII, and such keys are rare. The glob translation is pipeline/globs.py's.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..globs import glob_search_regex
from .listing import NO_SUFFIX, OTHER_SUFFIXES, ObjectFilter, suffix_key

KEEP, EXCLUDED, SKIPPED = 0, 1, 2
VERDICT_CODES = {"keep": KEEP, "excluded": EXCLUDED, "skipped": SKIPPED}
# The extension os.path.splitext gives a key's last part: from its last dot, provided a
# character other than a dot comes before that dot.
_EXTENSION = r"(?s)(?:^|/)\.*[^/.][^/]*(?P<ext>\.[^/.]*)$"


def glob_regex(glob: str) -> str:
    """An RE2 pattern that matches a key exactly when ``fnmatch.fnmatchcase(key, glob)`` does
    (``*`` matches anything, ``/`` included), for Arrow's substring search."""
    return glob_search_regex(glob)


@lru_cache(maxsize=64)
def globs_regex(globs: tuple[str, ...]) -> str | None:
    """One RE2 pattern for 'matches any of the (lowercased) globs'; None if there are none."""
    patterns = [glob_regex(g.lower()) for g in globs]
    return "|".join(f"(?:{p})" for p in patterns) or None


def _matches_any(lowered: pa.Array, globs: tuple[str, ...]) -> np.ndarray:
    pattern = globs_regex(globs)
    if pattern is None:
        return np.zeros(len(lowered), bool)
    return pc.match_substring_regex(lowered, pattern).to_numpy(zero_copy_only=False)


def _tally_keys(lowered: pa.Array) -> list[str]:
    """suffix_key of each (ASCII, lowercased) key."""
    ext = pc.struct_field(pc.extract_regex(lowered, _EXTENSION), "ext").fill_null("")
    width = pc.utf8_length(ext)
    keys = pc.if_else(pc.and_(pc.greater(width, 1), pc.less_equal(width, 12)), ext,
                      pc.if_else(pc.equal(width, 0), NO_SUFFIX, OTHER_SUFFIXES))
    return keys.to_pylist()


def key_verdicts(object_filter: ObjectFilter, keys: pa.Array) -> tuple[np.ndarray, Counter]:
    """Per key (relative to the source, no nulls): KEEP, EXCLUDED or SKIPPED exactly as
    ``object_filter.verdict``, and the skipped keys' tally keys counted in order of first
    appearance (what ListingTally needs to cap the tally the way it always has)."""
    n = len(keys)
    is_ascii = pc.string_is_ascii(keys).to_numpy(zero_copy_only=False) if n else np.ones(0, bool)
    lowered = pc.ascii_lower(keys)
    excluded = np.zeros(n, bool)
    if object_filter.include:
        excluded |= ~_matches_any(lowered, tuple(object_filter.include))
    if object_filter.exclude:
        excluded |= _matches_any(lowered, tuple(object_filter.exclude))
    has_suffix = np.zeros(n, bool)
    for suffix in dict.fromkeys(s.lower() for s in object_filter.suffixes):
        has_suffix |= pc.ends_with(lowered, suffix).to_numpy(zero_copy_only=False)
    codes = np.where(excluded, EXCLUDED, np.where(has_suffix, KEEP, SKIPPED)).astype(np.int8)

    others = np.flatnonzero(~is_ascii)
    other_keys = keys.take(pa.array(others)).to_pylist() if len(others) else []
    for row, key in zip(others, other_keys):
        codes[row] = VERDICT_CODES[object_filter.verdict(key)]

    skipped_rows = np.flatnonzero(codes == SKIPPED)
    if not len(skipped_rows):
        return codes, Counter()
    tally_keys = _tally_keys(lowered.take(pa.array(skipped_rows)))
    if len(others):
        by_row = dict(zip(others.tolist(), other_keys))
        for k, row in enumerate(skipped_rows.tolist()):
            if row in by_row:
                tally_keys[k] = suffix_key(by_row[row])
    return codes, Counter(tally_keys)  # a Counter keeps the order keys first appear in


def keys_kept(object_filter: ObjectFilter, keys: Sequence[str] | pa.Array) -> np.ndarray:
    """True for each key ``object_filter.matches``."""
    array = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(keys, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return key_verdicts(object_filter, array)[0] == KEEP
