"""`rowcall demo`, the command behind `make demo`, run as a user runs it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.e2e


def test_the_demo_runs_a_csv_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    sample = ROOT / "events" / "sample.csv"
    with sample.open(newline="", encoding="utf-8") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rowcall_local.cli",
            "demo",
            "--csv",
            str(sample),
            "--state-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "on-done (signature verified)" in done.stdout
    assert f"{rows}/{rows}" in done.stdout
    assert '"type": "batch.completed"' in done.stdout
    assert "results/" in done.stdout and "results.csv" in done.stdout
    assert not (tmp_path / "stack.json").exists(), "the stack was not stopped"
