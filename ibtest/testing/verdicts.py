"""Reading and asserting the verdicts of a :class:`~ibtest.api.StudyResult` in a test."""
from __future__ import annotations


def _members(result, name: str) -> list:
    results = result if isinstance(result, (list, tuple)) else [result]
    out = [m for r in results for m in r.members if m.label == name or m.hypothesis == name]
    if not out:
        labels = sorted({m.label for r in results for m in r.members})
        raise AssertionError(f"no hypothesis member {name!r} in the result (members: {', '.join(labels)})")
    return out


def verdict_of(result, name: str) -> str | dict[str, str]:
    """The verdict of member ``name`` (a label such as ``lp_norm[p=1]``), or {label: verdict}
    for every member of hypothesis ``name``."""
    ms = _members(result, name)
    exact = [m for m in ms if m.label == name]
    if len(exact) == 1:
        return str(exact[0].verdict)
    return {m.label: str(m.verdict) for m in ms}


def _explain(result) -> str:
    results = result if isinstance(result, (list, tuple)) else [result]
    return "\n\n".join(r.table() + "\n" + r.summary() for r in results)


def assert_verdict(result, name: str, verdict: str, grade: str | None = None) -> None:
    """Every member of hypothesis ``name`` (or the member with that label) got ``verdict`` (and,
    when given, a survival of that ``grade``: certified, pairs, triples or vacuous).

    On failure the message holds each member's verdict and reason and the run's table."""
    bad = [m for m in _members(result, name)
           if m.verdict != verdict or (grade is not None and (m.grade is None or m.grade != grade))]
    if bad:
        want = verdict + (f" ({grade})" if grade else "")
        lines = [f"expected {name} to be {want}:"]
        lines += [f"  {m.label}: {m.verdict}{f' ({m.grade})' if m.grade else ''} ({m.reason}"
                  f"{'; ' + m.error if m.error else ''})" for m in bad]
        raise AssertionError("\n".join(lines) + "\n\n" + _explain(result))


def assert_falsified(result, name: str) -> None:
    """Every member of ``name`` was falsified (a certified witness)."""
    assert_verdict(result, name, "falsified")


def assert_survives(result, name: str, grade: str | None = None) -> None:
    """Every member of ``name`` survived, on positive evidence (``grade``: what it must rest on:
    ``certified``, ``pairs``, ``triples`` or ``vacuous``; any of them when None)."""
    assert_verdict(result, name, "survives", grade)


def assert_unrefuted(result, name: str) -> None:
    """Every member of ``name`` is unrefuted: a local search found no witness, and nothing more."""
    assert_verdict(result, name, "unrefuted")


def assert_inconclusive(result, name: str) -> None:
    """Every member of ``name`` is inconclusive (no power: too few or identical pairs, Z(D) a single
    point, R's evaluation noise, a data-dependent R without a search)."""
    assert_verdict(result, name, "inconclusive")
