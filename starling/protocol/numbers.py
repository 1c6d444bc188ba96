"""Integers written by clients and servers: ASCII digits only, within the range storage holds.

Python's int() also reads " 7", "1_000", "٣" and rejects "²" only after str.isdigit()
said yes; a value beyond 64 bits reaches the database and fails there. Every number taken
from a path, query string or token goes through `parse_int` instead.
"""

from __future__ import annotations

import re

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_DIGITS = re.compile(r"-?[0-9]{1,19}", re.ASCII)


def parse_int(text: str, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int | None:
    """The integer `text` spells in plain ASCII decimal, if it lies in [minimum, maximum];
    None for anything else."""
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    if value < minimum or value > maximum:
        return None
    return value
