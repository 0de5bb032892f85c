"""50 concurrent clients read studies while 4 workers report: no errors (latency is a figure
for bench/load.py, never asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import run

pytestmark = pytest.mark.slow


def test_concurrent_readers_while_workers_report(tmp_path: Path) -> None:
    result = run(clients=50, workers=4, seconds=8, workdir=tmp_path)
    assert result["errors"] == 0, result["error_samples"]
    assert all(r["requests"] > 0 for r in result["routes"].values())
    assert result["finished_trials_during_run"] > 0
