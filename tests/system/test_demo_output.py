"""``hpo demo`` in an 80-column terminal: what it prints can be copied and run as printed, and
it says what the workers are doing while the first trial sets up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_prints_whole_paths_and_worker_progress(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    workdir = (
        tmp_path / "a-rather-long-folder-name" / "so-that-every-path-is-wider-than-80-columns"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(COLUMNS="80", HPO_CACHE_DIR=str(model_cache_dir))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo",
            "demo",
            "--workdir",
            str(workdir),
            "--workers",
            "1",
            "--trials",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a busy 2-core box
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "starting 1 CPU worker (the first trial builds the model and the data)..." in lines
    assert "…" not in result.stdout  # the progress table fits: nothing cut short
    assert [cell for cell in lines if "workers" in cell and "best loss" in cell]
    adapter = next(line for line in lines if line.startswith("best adapter: "))
    assert Path(adapter.removeprefix("best adapter: ")).is_file()
    serve = next(line for line in lines if line.startswith("HPO_AUTH=disabled "))
    assert len(serve) > 80
    assert serve.endswith(" serve")
    hpo = serve.split()[-2]  # the command works as printed, the virtualenv active or not
    assert (hpo == "hpo" and shutil.which("hpo")) or Path(hpo).is_file(), serve
    assert f"HPO_DATABASE_URL=sqlite:///{workdir.resolve() / 'hpo.db'} " in serve
