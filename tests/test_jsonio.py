"""ibtest.base.jsonio: the one JSON encoding of certificates and results (non-finite floats as strings)."""
from __future__ import annotations

import json
import math

import torch

from ibtest.base import jsonio


def test_nonfinite_floats_are_strings_and_come_back():
    doc = {"a": math.inf, "b": [-math.inf, math.nan, 1.5], 3: (1, "x", None, True)}
    enc = jsonio.to_jsonable(doc)
    assert enc == {"a": "inf", "b": ["-inf", "nan", 1.5], "3": [1, "x", None, True]}
    back = jsonio.decode_floats(json.loads(json.dumps(enc)))
    assert back["a"] == math.inf and back["b"][0] == -math.inf and math.isnan(back["b"][1])
    assert back["b"][2] == 1.5 and back["3"] == [1, "x", None, True]


def test_finite_values_pass_unchanged():
    for v in (0.0, -2.5, 1e-300, 7, "inf-ish", None, False):
        assert jsonio.encode_float(v) is v
    doc = {"x": [0.1, 2, "s"], "y": {"z": 1e-20}}
    assert json.dumps(jsonio.to_jsonable(doc), indent=1) == json.dumps(doc, indent=1)


def test_tensor_to_list():
    t = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    assert jsonio.tensor_to_list(t * 2) == [[2.0, 4.0]]
