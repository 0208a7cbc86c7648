"""JSON encoding shared by certificates, results files and reports.

JSON has no literal for the non-finite floats, yet losses, R values and margins can be ``inf`` or
``nan`` (a diverged run, an undefined R). They are written as the strings ``"inf"``, ``"-inf"``
and ``"nan"`` (Python's ``str(float)``) and read back by :func:`decode_floats`. Every finite
float, int, bool, string and ``None`` passes through unchanged, so ``json.dumps`` prints the same
bytes as it would without this module.

- :func:`encode_float` — one value: a non-finite ``float`` becomes its string, anything else is
  returned as is.
- :func:`to_jsonable` — a nested structure: dict keys become ``str``, tuples become lists, every
  float goes through :func:`encode_float`. Other leaves (ints, strings, ``None``) are kept.
- :func:`decode_floats` — the inverse on a loaded document: the three strings become floats again,
  recursively through dicts and lists. (Any string field that is literally ``"inf"`` is read as a
  float too; no field of the formats here holds such a string.)
- :func:`tensor_to_list` — a tensor as nested Python lists (detached, on the CPU), the form
  certificates store θ, X and y in.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["NONFINITE", "encode_float", "decode_floats", "to_jsonable", "tensor_to_list"]

#: The strings that stand for the non-finite floats in a JSON document.
NONFINITE = ("inf", "-inf", "nan")


def encode_float(x: Any) -> Any:
    """``x`` as a JSON value: a non-finite float becomes ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def decode_floats(x: Any) -> Any:
    """Undo :func:`encode_float` throughout a loaded JSON document (dicts and lists, recursively)."""
    if isinstance(x, str) and x in NONFINITE:
        return float(x)
    if isinstance(x, dict):
        return {k: decode_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [decode_floats(v) for v in x]
    return x


def to_jsonable(x: Any) -> Any:
    """A copy of ``x`` that ``json.dumps`` accepts and that keeps non-finite floats readable.

    Dict keys become strings, tuples lists, floats go through :func:`encode_float`; other values
    are returned unchanged (tensors must be converted first, with :func:`tensor_to_list`).
    """
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, float):
        return encode_float(x)
    return x


def tensor_to_list(x: torch.Tensor) -> list:
    """A tensor's values as (nested) Python lists: detached and copied to the CPU."""
    return x.detach().cpu().tolist()
