"""Text from the lake (object keys, URIs, error messages) on its way to a terminal or a shell.

Object keys may hold any character: ESC starts sequences a terminal obeys (OSC 52 writes the
clipboard), CR overwrites what a line showed, bidi controls reorder it. Everything the
commands print passes :func:`printable`; every command line printed for pasting is built by
:func:`command_line`, whose words a POSIX shell (bash, zsh) reads back exactly.
The explorer's page (explorer_static/explorer.js ``shellWord``) follows the same rules.
"""

from __future__ import annotations

import re
import shlex

# C0 and C1 controls, DEL, the line/paragraph separators and the bidi controls.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escaped(char: str) -> str:
    """One unsafe character as a backslash escape: \\n, \\x1b, \\u202e."""
    code = ord(char)
    return NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object) -> str:
    """``text`` with every control character shown escaped (\\x1b, \\r), safe to print."""
    return UNSAFE.sub(lambda m: escaped(m.group()), str(text))


def shell_word(text: str) -> str:
    """One shell word that reads back as ``text``: shlex quoting, or ``$'...'`` (bash, zsh,
    POSIX 2024) when ``text`` holds characters that must not reach a terminal raw."""
    if not UNSAFE.search(text):
        return shlex.quote(text)

    def ansi_c(char: str) -> str:
        if char in "\\'":
            return "\\" + char
        if not UNSAFE.match(char):
            return char
        # \x only for bytes below 0x80: above, bash writes the code point in the locale's encoding
        code = ord(char)
        return NAMED.get(char) or (f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")

    return "$'" + "".join(ansi_c(c) for c in text) + "'"


def command_line(*words: str) -> str:
    """A command line to paste: each word quoted by :func:`shell_word`."""
    return " ".join(shell_word(str(w)) for w in words)
