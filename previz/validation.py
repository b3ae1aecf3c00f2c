"""The two checks every user-supplied value shares, wherever it enters (protocol, recipe, camera, scene).

JSON as Python parses it can hold integers of thousands of digits (``float()`` of one raises
OverflowError, and so does ``math.isfinite``) and strings with lone UTF-16 surrogates (which
pass ``isinstance(x, str)`` and fail later, in a tokenizer or an encoder).
"""

from __future__ import annotations

import math
from typing import Any


def is_finite_number(value: Any) -> bool:
    """A real number (not a bool) that converts to a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def is_valid_text(value: str) -> bool:
    """Encodable as UTF-8: no lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
