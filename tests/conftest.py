"""Shared helpers: run the CLI in-process, locate the repository's studies."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ibtest.cli import main

if os.environ.get("PYTEST_XDIST_WORKER"):  # one process per core (pytest -n): no oversubscription
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "hypotheses"


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:  # shown by pytest on a failed assertion
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture
def cli(capsys):
    """Run ``ibtest ARGS`` in this process; returns exit code and captured output."""

    def run(*args: str) -> CliResult:
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


def results_json(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def verdicts(run_dir: Path) -> dict[str, str]:
    return {v["label"]: v["verdict"] for v in results_json(run_dir)["verdicts"]}
