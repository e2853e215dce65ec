"""Strings that come from files and reports are data: make them safe for where they are shown.

A variant name, a file name or a device string may hold terminal escape sequences, rich markup or
Markdown/HTML. Every renderer passes such strings through one of these before printing them.
"""

from __future__ import annotations

import re

# C0 and C1 control characters (ESC, CSI, BEL, CR, ...) and the Unicode bidi overrides that can
# make text read differently from what it is. Tab and newline are replaced too: one field, one line.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Inline punctuation that could open a link or image ([ ] ( )), HTML or an autolink (< >), an entity
# (&), a code span (`), emphasis (* _ ~), math ($) or end a table cell (|); and, at the start of the
# text only, what would begin a block (heading, quote, list item, setext underline).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]()<>|~&$])")
_MD_BLOCK_START = re.compile(r"^(\s*)([#>+=-]|\d+(?=[.)]))")


def plain(value) -> str:
    """The text with every control character shown as an escape (\\x1b), never executed."""
    return _UNSAFE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), str(value))


def rich(value) -> str:
    """Safe inside a rich markup string: no control characters, `[` cannot open a tag."""
    from rich.markup import escape

    return escape(plain(value))


def markdown(value) -> str:
    """Safe as Markdown text (also inside a table cell): every punctuation character that could
    open a link, an image, HTML, emphasis or a cell boundary is backslash-escaped."""
    text = _MD_SPECIAL.sub(r"\\\1", plain(value))
    return _MD_BLOCK_START.sub(_escape_block_start, text, count=1)


def _escape_block_start(m: re.Match) -> str:
    lead, mark = m[1], m[2]
    return f"{lead}\\{mark}" if not mark[0].isdigit() else f"{lead}{mark}\\"


def markdown_code(value) -> str:
    """A Markdown code span holding the text literally, whatever backticks it contains; a `|`
    is escaped so that it cannot end a table cell (GFM honours that inside code spans)."""
    text = plain(value).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"
