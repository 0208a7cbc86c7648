"""The README's example outputs come from the code (issue 28): every ``$ ibtest ...`` command of
the main-job example and of "Test your own regularizer" (from ``ibtest new`` to a shrunk,
verified certificate and a markdown report) is run as written, in a fresh directory, and its
output compared with what the README shows. A ``...`` line stands for any lines; run times and
the measured solver error (which vary from machine to machine) are compared as placeholders."""
from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
VARYING = [(re.compile(r"\b\d+\.\d+ s\b"), "<seconds> s"),
           (re.compile(r"max \|Δθ\| = \S+"), "max |Δθ| = <error>")]


def _normal(line: str) -> str:
    for pattern, placeholder in VARYING:
        line = pattern.sub(placeholder, line)
    return line.rstrip()


def console_examples(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) of each ``$ ibtest`` line of the console blocks
    of the main job (before "## Commands") and of "Test your own regularizer" up to the step that
    asks the reader to edit the plugin ("### 3.")."""
    text = (text.split("## Commands")[0]
            + text.split("## Test your own regularizer")[1].split("### 3. Put in your own R")[0])
    out: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^( *)```console\n(.*?)^\1```", text, flags=re.S | re.M):
        lines = textwrap.dedent(block[1]).splitlines()
        for line in lines:
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out:
                out[-1][1].append(line)
    return [(c, shown) for c, shown in out if c.startswith("ibtest ")]


def matches(shown: list[str], printed: list[str]) -> str | None:
    """None when ``printed`` is what the README shows (``...``: any lines), else what differs."""
    i, skipping = 0, False
    for want in shown:
        if want.strip() == "...":
            skipping = True
            continue
        want = _normal(want)
        while skipping and i < len(printed) and _normal(printed[i]) != want:
            i += 1
        if i >= len(printed) or _normal(printed[i]) != want:
            got = printed[i] if i < len(printed) else "<end of output>"
            return f"README shows {want!r}, the command printed {got!r} (line {i + 1})"
        i, skipping = i + 1, False
    if not skipping and i < len(printed):
        return f"the command printed more than the README shows: {printed[i]!r}"
    return None


def test_the_matcher_skips_and_normalizes():
    assert matches(["a", "...", "d 1.50 s"], ["a", "b", "c", "d 0.57 s"]) is None
    assert matches(["a", "b"], ["a", "c"]) == "README shows 'b', the command printed 'c' (line 2)"
    assert matches(["a"], ["a", "b"]) is not None


@pytest.mark.slow
def test_every_readme_command_prints_what_the_readme_shows(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    examples = console_examples(README.read_text(encoding="utf-8"))
    commands = [c for c, _ in examples]
    assert "ibtest new hypothesis my_reg" in commands and "ibtest run vardi_shamir_theorem3 --out runs/theorem3" in commands
    assert any(c.startswith("ibtest shrink ") for c in commands) and any(c.startswith("ibtest report ") for c in commands)
    for command, shown in examples:
        r = cli(*shlex.split(command)[1:])
        assert r.code == 0, (command, r)
        why = matches(shown, r.out.splitlines())
        assert why is None, f"$ {command}: {why}"
