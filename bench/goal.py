"""Issue 22's goal, per curve set and worker count: the recommended setting against the best
peer library (bench/results/peers.json), rendered into bench/results/strategies.md.

The best peer is the peer row with the lowest median cost to 0.1% among those that reach 0.1%
in at least ``PEER_MIN_REACH`` of their runs (where none does: among those with the highest
reach) and ran on every task of the set, so a peer that is cheap in the runs it reaches but
often misses, or ran on a few tasks only, does not set the bar.
The goal is met when ours costs at most ``GOAL`` x that median and reaches 0.1% in at least as
large a share of its runs. Reach is a share of runs: the two sides ran different seed counts.
"""

from __future__ import annotations

import math
from typing import Any

GOAL = 0.5  # ours / best peer, median cost to 0.1%
PEER_MIN_REACH = 0.9
TARGET = "0.001"


def reach(row: dict[str, Any]) -> float:
    """Share of a row's runs that reached 0.1%."""
    return row["cost_to_target"][TARGET]["reached_runs"] / row["runs"] if row["runs"] else 0.0


def cost(row: dict[str, Any]) -> float:
    """A row's median cost to 0.1% (inf when fewer than half its runs reached it)."""
    return float(row["cost_to_target"][TARGET]["median"])


def peer_rows(peers: dict[str, Any] | None, task_set: str, workers: int) -> list[dict[str, Any]]:
    """The peer rows of peers.json for one set and worker count that have finished runs
    (its copies of our default's rows left out)."""
    if peers is None:
        return []
    return [
        r
        for r in peers["rows"]
        if (r["set"], r["workers"]) == (task_set, workers)
        and not r["strategy"].startswith("ours")
        and r["runs"]
    ]


def best_peer(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The peer that sets the bar (see the module's docstring); None without peer rows."""
    # a row that covers only some of the set's tasks (a cut-short run) is no fair bar
    rows = [r for r in rows if not r.get("tasks")]
    if not rows:
        return None
    floor = min(PEER_MIN_REACH, max(reach(r) for r in rows))
    eligible = [r for r in rows if reach(r) >= floor]
    return min(eligible, key=lambda r: (cost(r), -reach(r), r["strategy"]))


def verdict(ours: dict[str, Any] | None, peer: dict[str, Any] | None) -> dict[str, Any]:
    """Ours against the best peer: cost ratio, goal met, and the shortfall where not met:
    ``over`` = ratio / GOAL (how many times too expensive), ``needed`` = the median cost that
    would meet it, ``reach_gap`` = the peer's reach share minus ours where ours is lower."""
    if ours is None or peer is None:
        return {"ratio": math.nan, "met": None, "over": None, "needed": None, "reach_gap": None}
    mine, theirs = cost(ours), cost(peer)
    # a peer that never reaches in most runs: any finite cost of ours beats it
    ratio = (0.0 if math.isfinite(mine) else math.nan) if math.isinf(theirs) else mine / theirs
    gap = reach(peer) - reach(ours)
    cheap = ratio <= GOAL  # a nan ratio (neither reaches in most runs) is not met
    return {
        "ratio": ratio,
        "met": cheap and gap <= 0,
        "over": None if cheap or math.isnan(ratio) else ratio / GOAL,
        "needed": GOAL * theirs if math.isfinite(theirs) else None,
        "reach_gap": gap if gap > 0 else None,
    }


def goal_rows(
    rows: list[dict[str, Any]], peers: dict[str, Any] | None, default: str, sets: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One entry per set and worker count that has our default's row or a peer row."""
    keys = {(r["set"], r["workers"]) for r in rows if r["strategy"] == default}
    keys |= {
        (r["set"], r["workers"])
        for r in (peers or {"rows": []})["rows"]
        if not r["strategy"].startswith("ours")
    }
    order = {s: i for i, s in enumerate(sets)}
    out = []
    for task_set, workers in sorted(keys, key=lambda k: (order.get(k[0], len(order)), k)):
        ours = next(
            (
                r
                for r in rows
                if (r["set"], r["workers"], r["strategy"]) == (task_set, workers, default)
            ),
            None,
        )
        peer = best_peer(peer_rows(peers, task_set, workers))
        out.append(
            {
                "set": task_set,
                "workers": workers,
                "ours": ours,
                "peer": peer,
                **verdict(ours, peer),
            }
        )
    return out


def seeds_text(meta: dict[str, Any]) -> str:
    """'seeds 0..1 (smollm2: 0..9)' from a bench.peers run's meta."""
    per_set = meta.get("set_seeds") or {}
    extra = ", ".join(f"{k}: 0..{n - 1}" for k, n in per_set.items())
    return f"seeds 0..{meta['seeds'] - 1}" + (f" ({extra})" if extra else "")


def _fmt(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.3f}"


def _side(row: dict[str, Any] | None) -> str:
    if row is None:
        return "- | -"
    reached = row["cost_to_target"][TARGET]["reached_runs"]
    return f"{_fmt(cost(row))} | {reached}/{row['runs']} ({reach(row):.0%})"


def _shortfall(g: dict[str, Any]) -> str:
    if g["met"] is None:
        return "no comparison"
    if g["met"]:
        return "-"
    parts = []
    if g["over"] is not None:
        needed = f" (needs <= {g['needed']:.3f})" if g["needed"] is not None else ""
        parts.append(f"cost {g['over']:.2f}x the goal{needed}")
    elif math.isnan(g["ratio"]):
        parts.append("neither reaches 0.1% in half its runs")
    if g["reach_gap"] is not None:
        parts.append(f"reach {100 * g['reach_gap']:.0f} pp lower")
    return "; ".join(parts)


def goal_table(
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    peers: dict[str, Any] | None,
    default: str,
    sets: tuple[str, ...],
) -> list[str]:
    """The goal table's markdown lines for the top of strategies.md."""
    lines = [
        f"## Goal: the recommended setting within 0.1% at <= {GOAL}x the best peer's median "
        "cost, reaching 0.1% in at least as large a share of runs",
        "",
    ]
    if peers is None:
        return [*lines, "No bench/results/peers.json: run `python -m bench.peers` first.", ""]
    carried = sorted(
        {
            r["commit"]
            for r in peers["rows"]
            if r.get("commit") and not r["strategy"].startswith("ours")
        }
    )
    lines += [
        f"Ours: `{default}` (the recommended setting, README 'Search defaults'), "
        f"commit `{meta['commit']}`, seeds 0..{meta['seeds'] - 1}"
        f" per task. Peers: bench/results/peers.json, commit `{peers['meta']['commit']}`, "
        f"{seeds_text(peers['meta'])} per task"
        + (
            f" (rows carried over from commit(s) {', '.join(carried)} say so below)"
            if carried
            else ""
        )
        + f". Best peer = the lowest median cost to 0.1% among the peers reaching 0.1% in >= "
        f"{PEER_MIN_REACH:.0%} of their runs (where none does: among those with the highest "
        "reach) and ran on every task of the set. Reach = share of runs within 0.1%. "
        "Ratio = our median cost / the best peer's. "
        f"Shortfall: how many times the {GOAL}x goal our median cost is, the median cost that "
        "would meet it, and how much lower our reach is (pp = percentage points).",
        "",
        "| set | workers | ours: cost to 0.1% | reached | best peer | its cost to 0.1% | reached "
        "| ours / best peer | goal met | shortfall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in goal_rows(rows, peers, default, sets):
        peer = g["peer"]["strategy"] if g["peer"] else "-"
        ratio = "-" if math.isnan(g["ratio"]) else f"{g['ratio']:.2f}"
        met = {None: "-", True: "yes", False: "no"}[g["met"]]
        lines.append(
            f"| {g['set']} | {g['workers']} | {_side(g['ours'])} | {peer} | {_side(g['peer'])} | "
            f"{ratio} | {met} | {_shortfall(g)} |"
        )
    return [*lines, ""]


def peer_lines(
    peers: dict[str, Any] | None, task_set: str, workers: int, blanks: int
) -> list[str]:
    """Peer rows for one set and worker count in strategies.md's per-set table: cost to 1% and
    0.1% as ours, ``blanks`` empty cells (regret and paused are not measured for peers)."""
    lines = []
    for r in peer_rows(peers, task_set, workers):
        cells = " | ".join(
            f"{_fmt(c['median'])} ({_fmt(c['iqr'][0])}-{_fmt(c['iqr'][1])}) | "
            f"{c['reached_runs']}/{r['runs']}"
            for c in (r["cost_to_target"][t] for t in ("0.01", TARGET))
        )
        late = f"{r.get('unfinished')} did not finish in {r.get('wall_cap') or 0:.0f} s"
        notes = [
            n
            for n in (
                r.get("tasks"),
                late if r.get("unfinished") else "",
                f"commit {r['commit']}" if r.get("commit") else "",
            )
            if n
        ]
        note = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"| {workers} | *peer: {r['strategy']}*{note} | {cells} |" + " - |" * blanks)
    return lines


def peer_lines_all(peers: dict[str, Any] | None, task_set: str, blanks: int) -> list[str]:
    """``peer_lines`` for every worker count the peers ran on ``task_set``."""
    workers = sorted(
        {r["workers"] for r in (peers or {"rows": []})["rows"] if r["set"] == task_set}
    )
    return [line for w in workers for line in peer_lines(peers, task_set, w, blanks)]
