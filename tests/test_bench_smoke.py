"""The benchmark command runs end to end in its quick mode.

It checks that every measurement runs and is reported, not that it meets its
target, because timings on a shared test machine vary too much to judge.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROW_KEYS = ("a", "b1", "b2", "c", "d1", "d2", "e", "f", "g")


@pytest.mark.timeout(200)
def test_quick_run_reports_every_row():
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = completed.stdout + completed.stderr

    assert completed.returncode == 0, report
    rows = {
        line.split("|")[1].strip(): line
        for line in completed.stdout.splitlines()
        if line.startswith("| ")
    }
    for key in ROW_KEYS:
        assert key in rows, f"no row {key} in the report:\n{report}"
    assert "failed:" not in completed.stdout
    assert "total time" in completed.stdout
