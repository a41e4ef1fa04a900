"""Globs as regular expressions that mean what ``fnmatch.fnmatchcase`` means, in the syntax RE2
(DuckDB, Arrow) and Python's ``re`` share: one translation for the scan's ``--include`` /
``--exclude`` (selection/keyfilter.py, over Arrow) and ``calibrate --by`` (output/calibration_sql.py,
in DuckDB). '*' matches any run, '/' included; '?' one character; '[...]' a set, read as
fnmatch (Python 3.11) reads it."""

from __future__ import annotations

import string

NEVER = r"[^\s\S]"  # an empty set: both engines reject fnmatch's '(?!)' lookahead or not


def escape_char(char: str) -> str:
    """A literal character in a regex or a set, the same in RE2 and Python."""
    return "\\" + char if char in string.punctuation else char


def glob_set(pattern: str, i: int, j: int) -> str:
    """The set ``pattern[i:j]`` (between '[' and ']') the way fnmatch.translate reads it."""
    stuff = pattern[i:j]
    if "-" not in stuff:
        chunks = [stuff]
    else:  # ranges, as in fnmatch: a '-' right after '[' or '[!' is a literal
        chunks = []
        k = i + 2 if pattern[i] == "!" else i + 1
        while True:
            k = pattern.find("-", k, j)
            if k < 0:
                break
            chunks.append(pattern[i:k])
            i = k + 1
            k = k + 3
        chunk = pattern[i:j]
        if chunk:
            chunks.append(chunk)
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):  # empty ranges such as 'z-a' match nothing
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
    raw = "-".join(chunks)
    if not raw:
        return NEVER
    if raw == "!":
        return "."
    negate = raw[0] == "!"
    if negate:
        chunks[0] = chunks[0][1:]
    body = "-".join("".join(escape_char(c) for c in chunk) for chunk in chunks)
    return f"[{'^' if negate else ''}{body}]"


def glob_regex(pattern: str) -> str:
    """The full-match regex of a glob, as fnmatch (Python 3.11) translates it, in the syntax
    RE2 and Python share: '*' any run (also of '/'), '?' one character, '[...]' sets."""
    parts: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            if not parts or parts[-1] != ".*":
                parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif char == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                parts.append("\\[")
            else:
                parts.append(glob_set(pattern, i, j))
                i = j + 1
        else:
            parts.append(escape_char(char))
    return "(?s)" + "".join(parts)


def glob_search_regex(pattern: str) -> str:
    """:func:`glob_regex` anchored at both ends, for engines that search (Arrow's
    ``match_substring_regex``) rather than match whole strings."""
    return "(?s)^(?:" + glob_regex(pattern).removeprefix("(?s)") + ")$"
