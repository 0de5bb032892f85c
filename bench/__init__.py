"""Benchmarks, one command each (bench/README.md). Each writes markdown and JSON to
``bench/results/`` with the commit and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()


def machine(*details: str) -> str:
    """The architecture and core count, then ``details`` (torch version, threads, ...)."""
    return ", ".join((platform.machine(), f"{os.cpu_count()} cores", *details))


def save(stem: str, data: Any, markdown: str) -> None:
    """``bench/results/{stem}.json`` and ``.md``."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown)
