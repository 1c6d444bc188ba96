"""The glob matcher: the same answers as fnmatch (and as the word-boundary regex push
rules used before) on small inputs, and no backtracking blow-up on hostile ones."""

from __future__ import annotations

import fnmatch
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from starling.protocol.glob import Glob, compile_glob, fold_case
from tests.support.hang_guard import finishes

patterns = st.text(alphabet="ab?*", max_size=8)
values = st.text(alphabet="ab", max_size=12)


@settings(max_examples=800, deadline=None)
@given(patterns, values)
def test_whole_value_matches_like_fnmatch(pattern: str, value: str) -> None:
    assert Glob(pattern).matches(value) == fnmatch.fnmatchcase(value, pattern)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="a?*", max_size=8), st.text(alphabet="a?*", max_size=10))
def test_question_mark_is_literal_when_asked(pattern: str, value: str) -> None:
    expected = re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), value, re.DOTALL)
    assert Glob(pattern, question_mark=False).matches(value) == (expected is not None)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="aAbB?*", max_size=8), st.text(alphabet="aAbBİ", max_size=10))
def test_ignore_case(pattern: str, value: str) -> None:
    expected = fnmatch.fnmatchcase(fold_case(value), fold_case(pattern))
    assert Glob(pattern, ignore_case=True).matches(value) == expected


def _old_word_regex(pattern: str) -> re.Pattern[str]:
    """The regex push rules used for content.body before: the reference semantics."""
    word, non_word = "(?-i:[A-Za-z0-9_])", "(?-i:[^A-Za-z0-9_])"
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    body = f"(?:(?<!{word})|(?={non_word})){body}(?:(?!{word})|(?<={non_word}))"
    return re.compile(body, re.DOTALL)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ab ?*", max_size=7), st.text(alphabet="ab _.", max_size=12))
def test_word_boundary_matching_like_the_regex(pattern: str, value: str) -> None:
    expected = _old_word_regex(pattern).search(value) is not None
    assert Glob(pattern).matches_words(value) == expected


def test_spec_examples() -> None:
    assert compile_glob("lunc?*", ignore_case=True).matches("Lunch plans")
    assert compile_glob("ex*ple", ignore_case=True).matches_words("An example event.")
    assert not compile_glob("ex*ple", ignore_case=True).matches_words("An examples event.")
    assert compile_glob("m.room.*", question_mark=False).matches("m.room.message")
    assert not compile_glob("m.room.?", question_mark=False).matches("m.room.x")


def test_many_wildcards_against_a_long_value_finish() -> None:
    pattern = "*a*a*a*a*a*a*a*a*b"
    value = "a" * 10_000
    assert finishes(lambda: Glob(pattern).matches(value)) is False
    assert finishes(lambda: Glob(pattern, ignore_case=True).matches_words(value)) is False
    assert finishes(lambda: Glob("*a?a*a?a*a?a*a?b").matches(value)) is False
    assert finishes(lambda: Glob(pattern).matches(value + "b")) is True


def test_long_question_mark_patterns_against_a_long_value_finish() -> None:
    """`?`s make segments that str.find cannot search: they must not cost
    len(value) x len(pattern) steps in Python either."""
    value = "a" * 65_536
    wild = "a?" * 500 + "b"
    assert finishes(lambda: Glob(wild).matches_words(value)) is False
    assert finishes(lambda: Glob("*" + wild + "*").matches(value)) is False
    assert finishes(lambda: Glob("*" + wild).matches_words(value)) is False
    assert finishes(lambda: Glob("?" * 1000 + "*" + wild).matches_words(value)) is False
    assert finishes(lambda: Glob("*" + "a?" * 500).matches(value)) is True
