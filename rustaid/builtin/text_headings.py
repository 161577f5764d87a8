"""Headings in plain text, found from layout alone.

Plain text has no markup, but its structure is usually visible: a title on the first
line, underlined titles (reStructuredText, setext), section titles in capitals at the
margin (as `man` prints them), subsection titles set further left than the text under
them, and `*` outlines in Org files. Chunks keep the heading path of their section, and
the embedded text starts with it, which helps retrieval as much for text as for Markdown.

The rules are strict on purpose: a line taken for a heading that is not one only adds a
few words to its chunks' embedded text, but a sentence cut out of its paragraph loses
meaning, so a candidate must be short, stand apart (a blank line before it) and not end
like a sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_HEADING_CHARS = 72
MAX_HEADING_WORDS = 10
# Lines of one repeated punctuation character underline (or overline) a title.
_ADORNMENT = re.compile(r"^([=\-~^*#+\"'`:.])\1{2,}\s*$")
_ORG = re.compile(r"^(\*+)\s+(\S.*)$")
_SENTENCE_END = (".", ",", ";", "!", "?")


@dataclass
class Outline:
    """The headings of a text: line number -> (level, title), and the lines that only
    decorate a heading (underlines, overlines) and hold no text."""

    headings: dict[int, tuple[int, str]] = field(default_factory=dict)
    decoration: set[int] = field(default_factory=set)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _short_title(text: str) -> bool:
    words = text.split()
    return (
        0 < len(words) <= MAX_HEADING_WORDS
        and len(text) <= MAX_HEADING_CHARS
        and not text.endswith(_SENTENCE_END)
        and any(c.isalpha() for c in text)
    )


def _capitals(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 3 and all(c.isupper() for c in letters)


def _next_text(lines: list[str], i: int) -> str:
    for j in range(i + 1, len(lines)):  # no slice: linear time over the whole text
        if lines[j].strip():
            return lines[j]
    return ""


class _Levels:
    """Heading styles numbered in the order they first appear (as reStructuredText does)."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.order: list[str] = []

    def of(self, style: str) -> int:
        if style not in self.order:
            self.order.append(style)
        return self.first + self.order.index(style)


def outline(text: str, *, org: bool = False) -> Outline:
    """The headings `text` shows by its layout (Org `*` headings too when `org`)."""
    lines = text.split("\n")
    found = Outline()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return found
    title = lines[first].strip()
    has_title = (
        first + 1 < len(lines)
        and not lines[first + 1].strip()
        and _short_title(title)
        and not _ADORNMENT.match(title)
        and not (org and _ORG.match(lines[first]))
    )
    if has_title:
        found.headings[first] = (1, title)
    levels = _Levels(2 if has_title else 1)
    caps_level = 0  # the level of capitals-at-the-margin sections, once one is seen
    body_indent = 0  # where the text of the last such section starts
    for i, line in enumerate(lines):
        if i in found.headings or i in found.decoration or not line.strip():
            continue
        stripped = line.strip()
        before = lines[i - 1] if i > 0 else ""
        after = lines[i + 1] if i + 1 < len(lines) else ""
        if org:
            if m := _ORG.match(line):
                found.headings[i] = (levels.first - 1 + len(m.group(1)), m.group(2).strip())
            continue
        apart = i == 0 or not before.strip() or bool(_ADORNMENT.match(before))
        under = _ADORNMENT.match(after)
        if apart and under and _short_title(stripped) and len(after.strip()) >= len(stripped) * 0.6:
            over = _ADORNMENT.match(before)
            overlined = bool(over) and before.strip()[0] == after.strip()[0]
            style = ("over" if overlined else "under") + after.strip()[0]
            found.headings[i] = (levels.of(style), stripped)
            found.decoration.add(i + 1)
            if overlined:
                found.decoration.add(i - 1)
            continue
        if not apart or _ADORNMENT.match(line):
            continue
        if _indent(line) <= 3 and _capitals(stripped) and _short_title(stripped):
            caps_level = levels.of("capitals")
            found.headings[i] = (caps_level, stripped)
            body_indent = _indent(_next_text(lines, i))
            continue
        # A subsection title under a capitals section: left of the section's text, and of
        # its own (a term of a definition list sits at the text's margin, not left of it).
        if (
            caps_level
            and 0 < _indent(line) < body_indent <= _indent(_next_text(lines, i))
            and stripped[0].isupper()
            and _short_title(stripped)
            and not stripped.endswith(":")
        ):
            found.headings[i] = (caps_level + 1, stripped)
    return found
