"""Run peer HPO libraries (Syne Tune, Ray Tune) on exported learning curves, each through its
own runtime. Imports only the standard library and the peers: run it with the peers
virtualenv's python (``python -m bench.peers --setup`` makes it), never with the project's.

    .peers-venv/bin/python bench/peer_runner.py JOBS.json

``JOBS.json`` is a list of ``{"task": PATH, "method": NAME, "workers": W, "seed": S,
"max_cost": DEVICE_SECONDS, "wall_cap": SECONDS, "out": PATH}``; a task file is what
``bench.peers.export_task`` writes. Each run writes to ``out``: the trace of trial ends, each
``[device cost so far, value, completed]`` (value = the trial's last reported point), and the
configurations it started.
Device cost is ours: the recorded cost of every point trained (a resumed trial does not train a
point twice) plus the part of each in-flight point that has elapsed on the simulated clock. A
run stops once a completed trial is within ``TARGET`` of the task's best final value (later
cost-to-target numbers cannot change), once ``max_cost`` is spent, or when the library stops.
A run still going after ``wall_cap`` seconds of real time is stopped and written as
``{"error": "did not finish in N s", "timed_out": true}``: bounded, and never silently missing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

METRIC, RESOURCE, ELAPSED = "loss", "step", "elapsed"
TARGET = 0.001  # the tighter target of bench.strategies.TARGETS
ETA = 3
SYNE_TUNE = (
    "st gp bo",
    "st asha stop",
    "st asha promotion",
    "st bohb",
    "st mobster",
    "st hypertune",
    "st dyhpo",
)
RAY = ("ray asha", "ray hyperband + optuna")
METHODS = SYNE_TUNE + RAY
WALL_CAP = 120.0  # seconds of real time per run when a job names none
# past the cap, a library stuck inside one decision (a GP fit) is interrupted this much later
GRACE = 30


class WallCapExceeded(Exception):
    """A run went past its wall-clock cap."""


class Curves:
    """One exported task: its parameters' choices and a curve of (cost, value) per config."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.name: str = data["name"]
        self.choices: dict[str, list[Any]] = data["choices"]
        self.best_value: float = data["best_value"]
        self.full_grid_cost: float = data["full_grid_cost"]
        self.curves = {self.key(c["params"]): c["curve"] for c in data["configurations"]}
        lengths = [len(c) for c in self.curves.values()]
        self.max_t = max(lengths)
        # as bench.strategies: R = the median curve length, first rung R / 9, eta = 3
        self.first_rung = max(1, round(round(median(lengths)) / 9))

    def key(self, config: dict[str, Any]) -> str:
        return json.dumps([config[name] for name in self.choices])

    def curve(self, config: dict[str, Any]) -> list[list[float]]:
        return self.curves[self.key(config)]


class Trace:
    """Device cost and trial ends of one run, shared by the libraries' hooks."""

    def __init__(self, task: Curves, max_cost: float, wall_cap: float = WALL_CAP) -> None:
        self.task, self.max_cost = task, max_cost
        self.deadline = time.monotonic() + wall_cap
        self.timed_out = False
        self.paid = 0.0  # cost of the points reported so far
        self.events: list[list[Any]] = []
        self.best_complete = float("inf")
        self.configurations: set[str] = set()

    def point(self, cost: float) -> None:
        self.paid += cost

    def end(self, spent: float, value: float, completed: bool) -> None:
        self.events.append([spent, value, completed])
        if completed:
            self.best_complete = min(self.best_complete, value)

    def done(self, in_flight: float = 0.0) -> bool:
        reached = self.best_complete <= self.task.best_value * (1 + TARGET)
        if not reached and time.monotonic() > self.deadline:
            self.timed_out = True
        return reached or self.timed_out or self.paid + in_flight >= self.max_cost


def _syne_tune(task: Curves, method: str, workers: int, seed: int, trace: Trace) -> None:
    from syne_tune import Tuner
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.backend.trial_status import Status
    from syne_tune.blackbox_repository.blackbox import Blackbox
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.config_space import choice, randint
    from syne_tune.constants import ST_TUNER_TIME
    from syne_tune.optimizer import baselines

    space = {name: choice(values) for name, values in task.choices.items()}
    started: dict[int, float] = {}  # running trial -> when its current point began
    next_cost: dict[int, float] = {}  # running trial -> cost of the point it is training

    class CurveBackend(UserBlackboxBackend):
        """The blackbox backend with each configuration's own curve (lengths differ)."""

        def config_objectives(self, config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
            trace.configurations.add(task.key(config))
            results, elapsed = [], 0.0
            for step, (cost, value) in enumerate(task.curve(self._filter_config(config)), 1):
                elapsed += cost
                results.append({METRIC: value, RESOURCE: step, ELAPSED: elapsed, "cost": cost})
            return results

        def _run_job_and_collect_results(self, trial_id: int, config: Any = None) -> Any:
            config = self._filter_config(config or self._trial_dict[trial_id].config)
            if task.key(config) not in task.curves:  # fails at no cost, as in hpo.simulate
                return Status.failed, []
            paused = self._resource_paused_for_trial.get(trial_id)
            curve = task.curve(config)
            if paused is not None and paused >= len(curve):
                # paused at a rung that is its curve's end, then promoted: nothing to train
                last = {METRIC: curve[-1][1], RESOURCE: len(curve), ELAPSED: 0.01, "cost": 0.0}
                return Status.completed, [last]
            return super()._run_job_and_collect_results(trial_id, config)

        def _process_start_event(self, trial_id: int, time_event: float, config: Any = None):
            super()._process_start_event(trial_id, time_event, config=config)
            started[trial_id] = time_event
            done = self._resource_paused_for_trial.get(trial_id, 0)
            config = self._filter_config(self._trial_dict[trial_id].config)
            curve = task.curves.get(task.key(config), [])
            next_cost[trial_id] = curve[done][0] if done < len(curve) else 0.0

    def spent(now: float) -> float:
        return trace.paid + sum(min(max(0.0, now - started[t]), next_cost[t]) for t in started)

    from syne_tune.tuner_callback import TunerCallback

    class Hooks(TunerCallback):
        def on_trial_result(self, trial: Any, status: str, result: dict, decision: str) -> None:
            now, tid = result[ST_TUNER_TIME], trial.trial_id
            trace.point(result["cost"])
            curve = task.curve(trial.config)
            step = int(result[RESOURCE])
            finished = step == len(curve)
            if finished or decision in ("STOP", "PAUSE"):
                started.pop(tid, None), next_cost.pop(tid, None)
                trace.end(spent(now), result[METRIC], finished)
            else:
                started[tid], next_cost[tid] = now, curve[step][0]

    blackbox = Blackbox(
        configuration_space=space,
        fidelity_space={RESOURCE: randint(1, task.max_t)},
        objectives_names=[METRIC, ELAPSED, "cost"],
    )
    backend = CurveBackend(blackbox=blackbox, elapsed_time_attr=ELAPSED, seed=0)
    common = {"metric": METRIC, "mode": "min", "random_seed": seed}
    multi = {
        **common,
        "resource_attr": RESOURCE,
        "max_t": task.max_t,
        "grace_period": task.first_rung,
        "reduction_factor": ETA,
    }
    kind = method.removeprefix("st ")
    if kind == "gp bo":
        scheduler = baselines.BayesianOptimization(space, **common)
    elif kind in ("asha stop", "asha promotion"):
        scheduler = baselines.ASHA(
            space, type=kind.replace("asha stop", "stopping").split()[-1], **multi
        )
    else:
        cls = {
            "bohb": baselines.BOHB,
            "mobster": baselines.MOBSTER,
            "hypertune": baselines.HyperTune,
            "dyhpo": baselines.DyHPO,
        }[kind]
        if kind == "dyhpo":
            # Its defaults (a rung every 2 points, a GP refit at every third decision over up to
            # 500 points) did not finish one 48-configuration run in 5 min: a rung every R/9
            # points (the others' first rung), a refit every 5th decision on <= 200 points.
            extra: dict[str, Any] = {
                "rung_increment": task.first_rung,  # linear rungs: replaces reduction_factor
                "search_options": {"opt_skip_period": 5, "max_size_data_for_model": 200},
            }
            multi.pop("reduction_factor")
        else:
            extra = {"type": "promotion" if kind != "bohb" else "stopping"}
        scheduler = cls(space, **multi, **extra)
    callback = SimulatorCallback()
    tuner = Tuner(
        trial_backend=backend,
        scheduler=scheduler,
        n_workers=workers,
        stop_criterion=lambda status: trace.done(),
        max_failures=10**6,  # an unrecorded configuration fails, as in hpo.simulate
        sleep_time=0,
        callbacks=[callback, Hooks()],
        save_tuner=False,
        results_update_interval=1e9,
        print_update_interval=1e9,
    )
    tuner.run()


def _ray(task: Curves, method: str, seed: int, trace: Trace, tmp: Path) -> None:
    import ray
    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler, HyperBandScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    def replay(config: dict[str, Any]) -> None:
        checkpoint = tune.get_checkpoint()
        start = 0
        if checkpoint is not None:  # a resumed HyperBand trial: continue, pay no point twice
            with checkpoint.as_directory() as d:
                start = int((Path(d) / "step").read_text())
        curve = config["_curve"]
        for step in range(start + 1, len(curve) + 1):
            cost, value = curve[step - 1]
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "step").write_text(str(step))
                tune.report(
                    {METRIC: value, RESOURCE: step, "cost": cost, "last": len(curve)},
                    checkpoint=tune.Checkpoint.from_directory(d),
                )

    class Hooks(tune.Callback):
        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            trace.point(result["cost"])
            trace.configurations.add(task.key(trial.config))
            if result[RESOURCE] == result["last"]:
                trace.end(trace.paid, result[METRIC], True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
            result = trial.last_result
            if result and result[RESOURCE] != result["last"]:  # stopped early by ASHA
                trace.end(trace.paid, result[METRIC], False)

    class Stop(tune.Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return trace.done()

    space: dict[str, Any] = {name: tune.choice(values) for name, values in task.choices.items()}
    curves = task.curves

    def with_curve(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "_curve": curves[task.key(config)]}

    samples = 8 * len(curves)
    if method == "ray asha":
        scheduler: Any = AsyncHyperBandScheduler(
            time_attr=RESOURCE,
            max_t=task.max_t,
            grace_period=task.first_rung,
            reduction_factor=ETA,
        )
        # Ray's random search samples with replacement: on a finite grid most proposals
        # repeat one already run (4 min a run). Every configuration once, in a seeded order.
        order = [dict(zip(task.choices, json.loads(k), strict=True)) for k in curves]
        random.Random(seed).shuffle(order)
        search_alg: Any = BasicVariantGenerator(points_to_evaluate=order, random_state=seed)
        samples = len(order)
    else:
        scheduler = HyperBandScheduler(time_attr=RESOURCE, max_t=task.max_t, reduction_factor=ETA)
        search_alg = OptunaSearch(metric=METRIC, mode="min", seed=seed)
    trainable = tune.with_parameters(lambda config: replay(with_curve(config)))
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="min",
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=samples,
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            storage_path=str(tmp), stop=Stop(), callbacks=[Hooks()], verbose=0, log_to_file=False
        ),
    )
    for attempt in range(3):  # Ray gives its node 30 s to start: not always enough on a busy box
        if ray.is_initialized():
            break
        try:
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    tuner.fit()


def run(job: dict[str, Any], tmp: Path) -> dict[str, Any]:
    task = Curves(json.loads(Path(job["task"]).read_text()))
    cap = float(job.get("wall_cap", WALL_CAP))
    trace = Trace(task, job["max_cost"], cap)
    began = time.time()

    def interrupt(signum: int, frame: Any) -> None:
        raise WallCapExceeded

    # the stop criteria see the deadline between decisions; the alarm ends one stuck inside one
    signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(int(cap) + GRACE)
    try:
        if job["method"] in SYNE_TUNE:
            _syne_tune(task, job["method"], job["workers"], job["seed"], trace)
        elif job["method"] in RAY:
            if job["workers"] != 1:
                raise ValueError(f"{job['method']} runs at 1 worker only, not {job['workers']}.")
            _ray(task, job["method"], job["seed"], trace, tmp)
        else:
            raise ValueError(f"unknown method {job['method']!r}; known: {', '.join(METHODS)}")
    except WallCapExceeded:
        trace.timed_out = True
    finally:
        signal.alarm(0)
    result = {
        **{k: job[k] for k in ("method", "workers", "seed")},
        "task": task.name,
        "trace": trace.events,
        "configurations": len(trace.configurations),
        "seconds": time.time() - began,
        "wall_cap": cap,
    }
    if trace.timed_out:
        # its trace is a prefix: costs to target from it would be biased, so it counts apart
        result.update(error=f"did not finish in {cap:.0f} s", timed_out=True)
    return result


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SYNETUNE_FOLDER"] = tmp  # Syne Tune's result files: thrown away
        for job in jobs:
            out = Path(job["out"])
            if out.exists():  # done, or stopped at its cap; a run that failed runs again
                done = json.loads(out.read_text())
                if "error" not in done or done.get("timed_out"):
                    continue
            try:
                result = run(job, Path(tmp))
            except Exception as e:  # one failing method must not lose the other runs
                result = {**job, "error": f"{type(e).__name__}: {e}"}
            out.write_text(json.dumps(result))
            print(out.name, result.get("error", ""), flush=True)


if __name__ == "__main__":
    main()
