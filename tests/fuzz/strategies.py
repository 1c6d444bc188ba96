"""Hypothesis strategies shared by the fuzz properties: hostile JSON values and text,
mutations of valid events, and the settings every property runs under."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("STARLING_FUZZ_EXAMPLES", "100"))


def fuzz_settings(scale: float = 1.0) -> settings:
    """The budget of one property: `scale` times STARLING_FUZZ_EXAMPLES examples, no deadline
    (a loaded CI machine must not turn a slow example into a failure)."""
    return settings(
        max_examples=max(10, int(EXAMPLES * scale)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Integers around every boundary the protocol cares about: canonical JSON's ±(2**53-1),
# 64-bit storage, and far beyond (Python's int has no limit; SQL columns do).
BOUNDARY_INTS = st.sampled_from(
    [
        0,
        -1,
        1,
        2**31,
        2**53 - 1,
        2**53,
        -(2**53) + 1,
        -(2**53),
        2**63 - 1,
        2**63,
        -(2**63),
        -(2**63) - 1,
        2**64,
        10**30,
        -(10**30),
    ]
)
ints = st.one_of(st.integers(), BOUNDARY_INTS)

# Text that breaks naive code: control characters, NUL, lone surrogates, non-ASCII digits
# ("²", "٣"), astral characters, whitespace of every kind.
NASTY_CHARS = st.sampled_from(
    [
        "\x00",
        "\n",
        "\r",
        "\t",
        "\x7f",
        "\u00b2",
        "\u0663",
        "\u00a0",
        "\u2028",
        "\ufeff",
        "\U0001f600",
        "\ud800",
        "\udfff",
        "~",
        ".",
        "_",
        ":",
        "!",
        "$",
        "@",
        "#",
        "\\",
        '"',
        "%",
        "/",
        "*",
        "?",
        ",",
        "=",
        " ",
    ]
)
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.one_of(NASTY_CHARS, st.characters()), max_size=40),
    st.text(alphabet="0123456789", min_size=15, max_size=40),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any value a JSON parser could give, plus the values it could not (NaN, huge ints,
    lone surrogates) — what a hostile peer's JSON turns into after a lenient parse."""
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.dictionaries(texts, inner, max_size=5),
        ),
        max_leaves=max_leaves,
    )


json_objects = st.dictionaries(texts, json_values(), max_size=6)
