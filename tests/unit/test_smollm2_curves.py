"""The recorded SmolLM2 curve set (``hpo.smollm2``) read from the file in the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.peers import ExportedTask, export_task
from bench.strategies import DEFAULT, STRATEGIES, _search, load_set
from hpo.simulate import NotRecorded, simulate
from hpo.smollm2 import EVAL_SHARE, NAMES, RECORDING, load_tasks


def _rows() -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in RECORDING.read_text().splitlines() if line.strip()]
    return lines[0]["meta"], [line for line in lines[1:] if line["points"]]


def test_the_recording_loads_as_its_grid_with_a_value_per_configuration() -> None:
    meta, rows = _rows()
    (task,) = load_tasks()
    assert task.meta == meta and len(task.curves) <= len(rows)
    space = task.search_space.model_dump()
    choices = [space[n]["choices"] for n in NAMES]
    assert len(task.curves) == len(choices[0]) * len(choices[1]) * len(choices[2])
    per_point = meta["every_examples"] + EVAL_SHARE * meta["eval_examples"]
    length = max(len(r["points"]) for r in rows)
    for row in rows:
        params = row["params"]
        key = (params["learning_rate"], params["per_device_train_batch_size"], params["lora_r"])
        if key not in task.curves:
            continue
        losses = [p["eval_loss"] for p in row["points"]]
        points = task.curve(dict(zip(NAMES, key, strict=True)))
        assert len(points) == length
        assert [v for _, v in points][: len(losses)] == losses
        assert {c for c, _ in points} == {per_point}
    assert task.best_value == min(c[-1] for c in task.curves.values())
    assert task.full_grid_cost == pytest.approx(per_point * length * len(task.curves))
    with pytest.raises(NotRecorded):
        task.curve({"learning_rate": 1.0, "per_device_train_batch_size": 4, "lora_r": 4})


def test_recorded_seconds_replace_the_modelled_cost_on_request() -> None:
    _, rows = _rows()
    (task,) = load_tasks(cost="seconds")
    recorded = sum(p["seconds"] or 0.0 for r in rows for p in r["points"])
    assert 0 < task.full_grid_cost <= recorded + 1e-6


def test_a_cut_short_recording_keeps_the_complete_part_of_its_grid(tmp_path: Path) -> None:
    meta, rows = _rows()
    (full,) = load_tasks()
    dropped = rows[0]["params"]
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(json.dumps(x) for x in [{"meta": meta}, *rows[1:]]) + "\n")
    (task,) = load_tasks(short)
    key = (dropped["learning_rate"], dropped["per_device_train_batch_size"], dropped["lora_r"])
    assert key not in task.curves and set(task.curves) < set(full.curves)
    assert all(task.curves[k] == full.curves[k] for k in task.curves)


def test_the_set_runs_in_the_simulator_and_exports_to_the_peers() -> None:
    (task,) = load_set("smollm2", None)
    back = ExportedTask(json.loads(json.dumps(export_task(task))))
    assert back.curves == task.curves and back.search_space == task.search_space
    search = _search(task, STRATEGIES[DEFAULT])
    search = search.model_copy(
        update={"budget": search.budget.model_copy(update={"max_trials": 4})}
    )
    sim = simulate(search, task, workers=2, seed=0)
    assert len(sim.trials) == 4 and sim.best_curve[-1][1] >= task.best_value
