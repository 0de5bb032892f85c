"""The GPU path of ``hpo worker --gpus`` without a GPU: the plan's pinning, and real child
processes that each see their own ``CUDA_VISIBLE_DEVICES``."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from worker.supervisor import Child, Supervisor, plan

NODE = ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]  # what nvidia-smi would list


def _devices(children: list[Child]) -> list[tuple[str, str | None]]:
    return [
        (c.argv[c.argv.index("--device") + 1], c.env.get("CUDA_VISIBLE_DEVICES")) for c in children
    ]


def _threads(children: list[Child]) -> list[str]:
    return [c.argv[c.argv.index("--cpu-threads") + 1] for c in children]


def test_all_gpus_one_child_each() -> None:
    children = plan("all", cpu_threads=12, environ={}, probe=lambda: NODE)
    assert _devices(children) == [("cuda:0", gpu) for gpu in NODE]
    assert _threads(children) == ["4", "4", "4"]
    assert all(c.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for c in children)


def test_a_list_picks_positions_among_the_visible() -> None:
    children = plan("0,2", environ={}, probe=lambda: NODE, worker_args=("--idle-exit=5",))
    assert _devices(children) == [("cuda:0", "GPU-aaaa"), ("cuda:0", "GPU-cccc")]
    assert all(c.argv[-1] == "--idle-exit=5" for c in children)


def test_an_allocation_narrows_what_is_visible() -> None:
    """SLURM (and CUDA itself) number the allocated GPUs from 0: `--gpus 1` is the second."""
    allocated = {"CUDA_VISIBLE_DEVICES": "4,6"}
    assert _devices(plan("all", environ=allocated, probe=lambda: NODE)) == [
        ("cuda:0", "4"),
        ("cuda:0", "6"),
    ]
    assert _devices(plan("1", environ=allocated, probe=lambda: NODE)) == [("cuda:0", "6")]


def test_no_gpu_falls_back_to_cpu_processes() -> None:
    for gpus in ("all", None):
        children = plan(gpus, processes=3, cpu_threads=7, environ={}, probe=list)
        assert _devices(children) == [("cpu", None)] * 3
        assert _threads(children) == ["2", "2", "2"]


@pytest.mark.parametrize(
    ("gpus", "message"), [("0,x", "'all' or a list"), ("3", "outside the 3 visible")]
)
def test_bad_gpu_lists_are_refused(gpus: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(gpus, environ={}, probe=lambda: NODE)


def test_each_child_process_sees_its_own_gpu(tmp_path: Path) -> None:
    """Real processes started from the plan's environments (a stub stands in for the worker,
    which would need CUDA)."""
    stub = (
        "import json, os, sys; from pathlib import Path; "
        "Path(sys.argv[1]).write_text(json.dumps([os.environ.get(k) for k in "
        "('CUDA_VISIBLE_DEVICES', 'CUDA_DEVICE_ORDER')]))"
    )
    children = [
        dataclasses.replace(c, argv=(sys.executable, "-c", stub, str(tmp_path / c.name)))
        for c in plan("all", environ={}, probe=lambda: NODE)
    ]
    Supervisor(children, poll_s=0.05).run(handle_signals=False)
    seen = [json.loads((tmp_path / f"gpu{i}").read_text()) for i in range(3)]
    assert seen == [[gpu, "PCI_BUS_ID"] for gpu in NODE]
