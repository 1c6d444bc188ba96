"""Glob matching without backtracking, for every pattern a user supplies.

Spec: appendices "Glob-style matching" (`*` matches zero or more characters, `?` exactly
one); sync filters use `*` alone ("A `*` can be used as a wildcard"); push rules'
`event_match` is case-insensitive and matches the whole value, or for `content.body` any
substring that starts and ends at a word boundary (push.md, "Conditions").

Patterns and values both come from users, so a regex translation (whose backtracking
is exponential in the number of `*`s) is out. A pattern is split at its `*`s into
segments; the first segment is anchored at the start, the last at the end, and each
middle one is placed at its leftmost fit after the previous one - leftmost is always a
best choice, because a `*` absorbs whatever lies between. The cost is at worst
O(len(value) x len(pattern)) and usually one `str.find` per segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def fold_case(value: str) -> str:
    """Lower case, one character for one (so `?` still means one character): characters
    whose lower case is longer (e.g. 'İ') are kept as they are."""
    lowered = value.lower()
    if len(lowered) == len(value):
        return lowered
    return "".join(c if len(low := c.lower()) != 1 else low for c in value)


@dataclass(frozen=True, slots=True)
class _Segment:
    """A run of the pattern between two `*`s: literal characters and `?`s."""

    text: str
    any_char: frozenset[int]  # offsets of `?`
    # The longest literal run and its offset, to jump to candidates with str.find.
    anchor: str
    anchor_at: int

    def fits_at(self, value: str, pos: int) -> bool:
        size = len(self.text)
        if pos < 0 or pos + size > len(value):
            return False
        if not self.any_char:
            return value.startswith(self.text, pos)
        return all(k in self.any_char or self.text[k] == value[pos + k] for k in range(size))

    def find(self, value: str, start: int, stop: int) -> int:
        """The leftmost position >= start where the segment fits ending by `stop`; -1."""
        last = stop - len(self.text)
        if last < start:
            return -1
        if not self.any_char:
            return value.find(self.text, start, stop)
        if not self.anchor:  # all `?`: any position fits
            return start
        pos = start
        while pos <= last:
            hit = value.find(
                self.anchor, pos + self.anchor_at, last + self.anchor_at + len(self.anchor)
            )
            if hit < 0:
                return -1
            candidate = hit - self.anchor_at
            if self.fits_at(value, candidate):
                return candidate
            pos = candidate + 1
        return -1


def _segment(text: str, single: str | None) -> _Segment:
    if single is None or single not in text:
        return _Segment(text, frozenset(), text, 0)
    any_char = frozenset(i for i, c in enumerate(text) if c == single)
    best, best_at, run_at = "", 0, 0
    for i in range(len(text) + 1):
        if i == len(text) or text[i] == single:
            if i - run_at > len(best):
                best, best_at = text[run_at:i], run_at
            run_at = i + 1
    return _Segment(text, any_char, best, best_at)


class Glob:
    """A compiled pattern. `question_mark=False` makes `?` literal (sync filters);
    `ignore_case` folds both sides with `fold_case`."""

    __slots__ = ("_ignore_case", "_segments")

    def __init__(self, pattern: str, *, question_mark: bool = True, ignore_case: bool = False):
        self._ignore_case = ignore_case
        if ignore_case:
            pattern = fold_case(pattern)
        single = "?" if question_mark else None
        self._segments = tuple(_segment(part, single) for part in pattern.split("*"))

    def _value(self, value: str) -> str:
        return fold_case(value) if self._ignore_case else value

    def matches(self, value: str) -> bool:
        """Whether the pattern matches the whole value."""
        value = self._value(value)
        first, last = self._segments[0], self._segments[-1]
        if len(self._segments) == 1:
            return len(value) == len(first.text) and first.fits_at(value, 0)
        if not first.fits_at(value, 0):
            return False
        end = self._place_middle(value, len(first.text), len(value) - len(last.text))
        return end >= 0 and last.fits_at(value, len(value) - len(last.text))

    def matches_words(self, value: str) -> bool:
        """Whether the pattern matches a substring of the value that starts and ends at
        a word boundary: the value's start or end, or a character outside
        [A-Za-z0-9_] (taken on either side of the edge)."""
        value = self._value(value)
        n = len(value)
        starts = [i for i in range(n + 1) if _starts_word(value, i)]
        ends = [j for j in range(n + 1) if _ends_word(value, j)]
        first, last = self._segments[0], self._segments[-1]
        if len(self._segments) == 1:
            ends_set = set(ends)
            size = len(first.text)
            return any(i + size in ends_set and first.fits_at(value, i) for i in starts)
        # The leftmost start leaves the most room for the rest; the rightmost end too.
        start = next((i for i in starts if first.fits_at(value, i)), -1)
        if start < 0:
            return False
        end = next((j for j in reversed(ends) if last.fits_at(value, j - len(last.text))), -1)
        if end < 0:
            return False
        return self._place_middle(value, start + len(first.text), end - len(last.text)) >= 0

    def _place_middle(self, value: str, start: int, stop: int) -> int:
        """Fit the middle segments leftmost, in order, within value[start:stop]; the
        position after the last one, or -1 if they do not fit."""
        if stop < start:
            return -1
        pos = start
        for segment in self._segments[1:-1]:
            found = segment.find(value, pos, stop)
            if found < 0:
                return -1
            pos = found + len(segment.text)
        return pos


def _is_word(c: str) -> bool:
    return c in _WORD_CHARS


def _starts_word(value: str, i: int) -> bool:
    return i == 0 or not _is_word(value[i - 1]) or (i < len(value) and not _is_word(value[i]))


def _ends_word(value: str, j: int) -> bool:
    return j == len(value) or not _is_word(value[j]) or (j > 0 and not _is_word(value[j - 1]))


@lru_cache(maxsize=4096)
def compile_glob(pattern: str, *, question_mark: bool = True, ignore_case: bool = False) -> Glob:
    """A cached compiled pattern (patterns repeat: push rules, filters)."""
    return Glob(pattern, question_mark=question_mark, ignore_case=ignore_case)
