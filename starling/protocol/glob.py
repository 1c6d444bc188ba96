"""Glob matching without backtracking, for every pattern a user supplies.

Spec: appendices "Glob-style matching" (`*` matches zero or more characters, `?` exactly
one); sync filters use `*` alone ("A `*` can be used as a wildcard"); push rules'
`event_match` is case-insensitive and matches the whole value, or for `content.body` any
substring that starts and ends at a word boundary (push.md, "Conditions").

Patterns and values both come from users, so a regex translation (whose backtracking
is exponential in the number of `*`s) is out. A pattern is split at its `*`s into
segments; the first segment is anchored at the start, the last at the end, and each
middle one is placed at its leftmost fit after the previous one - leftmost is always a
best choice, because a `*` absorbs whatever lies between. Each segment's search resumes
where the previous one stopped, so the value is walked once: literal segments with
`str.find`, segments with `?` bit-parallel (Shift-And).
"""

from __future__ import annotations

from collections.abc import Iterator
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
    """A run of the pattern between two `*`s: literal characters and `?`s. A segment
    with `?`s is searched bit-parallel (Shift-And: one step per character of the value,
    whatever the segment's length); a literal one with `str.find`."""

    text: str
    wild: bool  # has a `?`
    masks: dict[str, int]  # bit k set where the segment's character k accepts the key
    any_mask: int  # the bits of the `?`s: what any other character is accepted at

    def fits_at(self, value: str, pos: int) -> bool:
        size = len(self.text)
        if pos < 0 or pos + size > len(value):
            return False
        if not self.wild:
            return value.startswith(self.text, pos)
        return all((self.masks.get(value[pos + k], self.any_mask) >> k) & 1 for k in range(size))

    def fits(self, value: str, start: int, stop: int) -> Iterator[int]:
        """Every position p >= start where the segment fits within value[:stop], in
        increasing order; linear in stop - start."""
        size = len(self.text)
        if size == 0:
            yield from range(start, stop + 1)
            return
        if not self.wild:
            pos = value.find(self.text, start, stop)
            while pos >= 0:
                yield pos
                pos = value.find(self.text, pos + 1, stop)
            return
        state, goal, masks, any_mask = 0, 1 << (size - 1), self.masks, self.any_mask
        for index in range(start, stop):
            state = ((state << 1) | 1) & masks.get(value[index], any_mask)
            if state & goal:
                yield index - size + 1

    def find(self, value: str, start: int, stop: int) -> int:
        """The leftmost position >= start where the segment fits within value[:stop]; -1."""
        return next(self.fits(value, start, stop), -1)


def _segment(text: str, single: str | None) -> _Segment:
    if single is None or single not in text:
        return _Segment(text, False, {}, 0)
    any_mask = sum(1 << k for k, c in enumerate(text) if c == single)
    masks: dict[str, int] = {}
    for k, c in enumerate(text):
        if c != single:
            masks[c] = masks.get(c, any_mask) | (1 << k)
    return _Segment(text, True, masks, any_mask)


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
        first, last = self._segments[0], self._segments[-1]
        if len(self._segments) == 1:
            size = len(first.text)
            return any(
                _starts_word(value, i) and _ends_word(value, i + size)
                for i in first.fits(value, 0, n)
            )
        # The leftmost start leaves the most room for the rest; then each middle segment
        # leftmost; then any fit of the last segment that ends at a boundary.
        start = next((i for i in first.fits(value, 0, n) if _starts_word(value, i)), -1)
        if start < 0:
            return False
        pos = self._place_middle(value, start + len(first.text), n)
        if pos < 0:
            return False
        size = len(last.text)
        return any(_ends_word(value, j + size) for j in last.fits(value, pos, n))

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


# Patterns longer than this are compiled afresh each time rather than cached, so that the
# cache's memory stays small whatever patterns users store.
MAX_CACHED_PATTERN = 512


def compile_glob(pattern: str, *, question_mark: bool = True, ignore_case: bool = False) -> Glob:
    """A compiled pattern, cached when short (patterns repeat: push rules, filters)."""
    if len(pattern) > MAX_CACHED_PATTERN:
        return Glob(pattern, question_mark=question_mark, ignore_case=ignore_case)
    return _cached_glob(pattern, question_mark, ignore_case)


@lru_cache(maxsize=4096)
def _cached_glob(pattern: str, question_mark: bool, ignore_case: bool) -> Glob:
    return Glob(pattern, question_mark=question_mark, ignore_case=ignore_case)
