"""bench.goal: which peer sets the bar, and by how much the default falls short of 0.5x it.
The fixture's figures are NMTLC's at one worker from bench/results/peers.json (commit 6873ea8)
and strategies.json (18aede5), plus a made-up peer that is cheap but often misses."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench import goal


def row(strategy: str, median: float, reached: int, runs: int, **extra: Any) -> dict[str, Any]:
    stats = {"median": median, "iqr": (median, median), "reached_runs": reached}
    return {
        "set": "nmtlc",
        "workers": 1,
        "strategy": strategy,
        "runs": runs,
        "cost_to_target": {"0.01": stats, "0.001": stats},
        **extra,
    }


OURS = row("tpe", 0.567, 48, 50)
GP_BO = row("st gp bo", 0.286, 20, 20)
RAY_HB = row("ray hyperband + optuna", 0.798, 11, 12)
ASHA = row("st asha promotion", math.inf, 2, 20)
CHEAP_BUT_UNRELIABLE = row("st lucky", 0.2, 12, 20)  # 60% reach: must not set the bar
PEERS = {
    "meta": {"commit": "6873ea8", "seeds": 2},
    "rows": [
        row("ours: tpe (default)", 0.567, 48, 50),  # peers.json's copy of ours: never a peer
        GP_BO,
        RAY_HB,
        ASHA,
        CHEAP_BUT_UNRELIABLE,
        row("st dyhpo", math.inf, 0, 0, unfinished=20, wall_cap=120.0),  # no finished run
    ],
}


def test_the_best_peer_is_the_cheapest_that_reaches_in_most_runs() -> None:
    peers = goal.peer_rows(PEERS, "nmtlc", 1)
    assert [r["strategy"] for r in peers] == [
        "st gp bo",
        "ray hyperband + optuna",
        "st asha promotion",
        "st lucky",
    ]
    assert goal.best_peer(peers) is GP_BO
    # without GP BO, Ray HyperBand (11/12 = 92%) beats the cheaper peer that reaches in 60%
    assert goal.best_peer([RAY_HB, CHEAP_BUT_UNRELIABLE]) is RAY_HB
    # where no peer reaches in 90% of runs, the most reliable one sets the bar
    assert goal.best_peer([CHEAP_BUT_UNRELIABLE, ASHA]) is CHEAP_BUT_UNRELIABLE
    assert goal.best_peer([]) is None
    # a cut-short row (some of the set's tasks only) never sets the bar, however cheap
    partial = row("st mobster", 0.079, 2, 2, tasks="2 of 10 tasks")
    assert goal.best_peer([partial, RAY_HB]) is RAY_HB
    assert goal.best_peer([partial]) is None


def test_the_shortfall_says_how_far_from_half_the_best_peers_cost() -> None:
    v = goal.verdict(OURS, GP_BO)
    assert v["ratio"] == pytest.approx(0.567 / 0.286)
    assert v["met"] is False
    assert v["over"] == pytest.approx(v["ratio"] / goal.GOAL)
    assert v["needed"] == pytest.approx(goal.GOAL * 0.286)
    assert v["reach_gap"] == pytest.approx(20 / 20 - 48 / 50)


def test_the_goal_needs_the_cost_and_the_reach() -> None:
    cheap = row("tpe", 0.9 * goal.GOAL * 0.286, 50, 50)
    assert goal.verdict(cheap, GP_BO)["met"] is True
    assert goal.verdict(cheap, GP_BO)["over"] is None
    cheap_but_missing = row("tpe", 0.9 * goal.GOAL * 0.286, 45, 50)
    v = goal.verdict(cheap_but_missing, GP_BO)
    assert v["met"] is False and v["over"] is None
    assert v["reach_gap"] == pytest.approx(1 - 45 / 50)
    # a peer that never reaches in half its runs is beaten by any finite median of ours
    assert goal.verdict(OURS, ASHA)["met"] is True


def test_the_goal_table_has_one_line_per_set_and_workers_with_the_shortfall() -> None:
    ours_w8 = {**row("tpe", 1.102, 50, 50), "workers": 8}
    meta = {"commit": "18aede5", "seeds": 5}
    lines = goal.goal_table([OURS, ours_w8], meta, PEERS, "tpe", ("nmtlc",))
    table = [line for line in lines if line.startswith("| nmtlc")]
    assert len(table) == 2
    w1, w8 = table
    assert "| st gp bo |" in w1 and "| no |" in w1
    assert f"{0.567 / 0.286 / goal.GOAL:.2f}x the goal" in w1
    assert "reach 4 pp lower" in w1
    assert "no comparison" in w8  # no peer ran at 8 workers in the fixture


def test_peer_lines_list_the_peers_with_runs_beside_ours() -> None:
    lines = goal.peer_lines_all(PEERS, "nmtlc", 6)
    assert [line.split("|")[2].strip() for line in lines] == [
        f"*peer: {r['strategy']}*" for r in (GP_BO, RAY_HB, ASHA, CHEAP_BUT_UNRELIABLE)
    ]
    assert all(line.count("|") == 7 + 6 for line in lines)  # 6 columns + the blanks
