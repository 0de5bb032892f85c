"""``GET /studies/{name}``: our API against a minimal FastAPI app, side by side.

    python -m bench.api_baseline [--clients 10 50] [--rounds 3] [--seconds 8] [--tag TAG]

One PostgreSQL cluster with our schema, 5 registered studies of 60 trials each; three servers
on it at once: ``hpo serve`` (one process), ``hpo serve --workers 2`` and ``bench.minimal_app``
under uvicorn. The same keep-alive load generator (asyncio, one connection per client) drives
each in turn, the order rotating each round; each window counts the requests, their answers
and the CPU the server's processes spent (``/proc``), and what the whole box was busy with.
Medians over the rounds go to bench/results/api-baseline[-TAG].{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import optuna

from bench import commit, machine, save
from hpo.core.migrate import upgrade
from tests.pg import PostgresCluster, _free_port
from tests.workers import small_study, wait_healthy

SERVERS = {
    "minimal": ["-m", "uvicorn", "bench.minimal_app:app", "--log-level", "warning"],
    "ours": ["-m", "hpo", "serve", "--no-migrate"],
    "ours-workers2": ["-m", "hpo", "serve", "--no-migrate", "--workers", "2"],
}
STUDIES = [f"bench-{i}" for i in range(5)]
TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's worker processes)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += _tree(int(child))
    return found


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants, from /proc."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def box_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n")[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / TICKS


async def _client(port: int, path: bytes, token: bytes, stop: float, out: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        b"GET " + path + b" HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer " + token + b"\r\n\r\n"
    )
    try:
        while time.monotonic() < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            out[status] = out.get(status, 0) + 1
            if b"connection: close" in head.lower():
                break
    finally:
        writer.close()


async def _load(port: int, token: str, clients: int, seconds: float) -> dict[str, int]:
    out: dict[str, int] = {}
    stop = time.monotonic() + seconds
    await asyncio.gather(
        *(
            _client(port, f"/studies/{STUDIES[k % 5]}".encode(), token.encode(), stop, out)
            for k in range(clients)
        )
    )
    return out


def window(pid: int, port: int, token: str, clients: int, seconds: float) -> dict[str, Any]:
    """One measured window against one server."""
    load_before = os.getloadavg()[0]
    cpu0, box0, gen0, t0 = cpu_s(pid), box_busy_s(), time.process_time(), time.monotonic()
    answers = asyncio.run(_load(port, token, clients, seconds))
    elapsed = time.monotonic() - t0
    cpu, box, gen = cpu_s(pid) - cpu0, box_busy_s() - box0, time.process_time() - gen0
    requests = sum(answers.values())
    return {
        "requests_per_s": requests / elapsed,
        "server_cpu_ms_per_request": 1000 * cpu / max(requests, 1),
        "server_cores": cpu / elapsed,
        "load_generator_cores": gen / elapsed,
        # what the box ran besides this server and the load generator: PostgreSQL, the idle
        # servers, and every other user of the machine
        "other_cores": (box - cpu - gen) / elapsed,
        "loadavg_1min_before": load_before,
        "answers": answers,
        "non_200": requests - answers.get("200", 0),
        "answers_5xx": sum(n for s, n in answers.items() if s.startswith("5")),
    }


def _populate(url: str) -> None:
    """60 trials per study: 40 complete, 12 pruned, 4 failed, 4 waiting."""
    storage = optuna.storages.RDBStorage(url)
    dists = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-5, 3e-2, log=True),
        "lora_r": optuna.distributions.CategoricalDistribution([4, 8]),
    }
    for name in STUDIES:
        study = optuna.load_study(study_name=name, storage=storage)
        for i in range(60):
            state = (
                optuna.trial.TrialState.COMPLETE
                if i < 40
                else optuna.trial.TrialState.PRUNED
                if i < 52
                else optuna.trial.TrialState.FAIL
                if i < 56
                else optuna.trial.TrialState.WAITING
            )
            study.add_trial(
                optuna.trial.create_trial(
                    params={"learning_rate": 1e-4 * (1 + i % 7), "lora_r": 4 + 4 * (i % 2)},
                    distributions=dists,
                    value=1.0 + (i * 37 % 11) / 10 if i < 40 else None,
                    intermediate_values={0: 2.0} if 40 <= i < 52 else {},
                    state=state,
                )
            )
    storage.engine.dispose()


def run(*, clients: list[int], rounds: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """Start the database and the three servers, measure every pairing, stop them all."""
    cluster = PostgresCluster()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        url = cluster.url()
        upgrade(url)
        env = dict(os.environ, HPO_DATABASE_URL=url, HPO_ARTIFACT_DIR=str(workdir / "art"))
        ports = {name: _free_port() for name in SERVERS}
        for name, args in SERVERS.items():
            with (workdir / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, *args, "--port", str(ports[name])],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        for name in ("ours", "ours-workers2"):
            wait_healthy(f"http://127.0.0.1:{ports[name]}")
        token = subprocess.run(
            [sys.executable, "-m", "hpo", "token", "create", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        with httpx.Client(
            base_url=f"http://127.0.0.1:{ports['ours']}",
            headers={"Authorization": f"Bearer {token}"},
        ) as http:
            for name in STUDIES:
                http.post("/studies", json=small_study(name)).raise_for_status()
        _populate(url)
        for name in SERVERS:  # warm up: imports, pools, compiled statements
            window(procs[name].pid, ports[name], token, 10, 2)
        windows: list[dict[str, Any]] = []
        for r in range(rounds):
            for c in clients:
                order = list(SERVERS)[r % 3 :] + list(SERVERS)[: r % 3]
                for name in order:
                    w = window(procs[name].pid, ports[name], token, c, seconds)
                    windows.append({"server": name, "clients": c, "round": r, **w})
                    print(
                        f"round {r} {name:14} {c:3} clients: {w['requests_per_s']:6.0f}/s, "
                        f"{w['server_cpu_ms_per_request']:.2f} ms CPU/request, "
                        f"other cores {w['other_cores']:.2f}, answers {w['answers']}",
                        flush=True,
                    )
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()
    return {"clients": clients, "rounds": rounds, "seconds": seconds, "windows": windows}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians per server and client count, and the ratios the issue asks about."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in SERVERS:
        for c in result["clients"]:
            ws = [w for w in result["windows"] if w["server"] == name and w["clients"] == c]
            table.setdefault(name, {})[str(c)] = {
                key: statistics.median(w[key] for w in ws)
                for key in (
                    "requests_per_s",
                    "server_cpu_ms_per_request",
                    "server_cores",
                    "other_cores",
                    "loadavg_1min_before",
                )
            } | {
                "non_200": sum(w["non_200"] for w in ws),
                "5xx": sum(w["answers_5xx"] for w in ws),
            }
    ratios = {
        str(c): {
            "cpu_per_request_ours_over_minimal": table["ours"][str(c)]["server_cpu_ms_per_request"]
            / table["minimal"][str(c)]["server_cpu_ms_per_request"],
            "requests_per_s_workers2_over_one": table["ours-workers2"][str(c)]["requests_per_s"]
            / table["ours"][str(c)]["requests_per_s"],
        }
        for c in result["clients"]
    }
    return {"medians": table, "ratios": ratios}


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        "# API read path against a minimal FastAPI app",
        "",
        f"Commit `{result['commit']}`, {result['machine']}. `GET /studies/{{name}}` over 5 "
        f"studies of 60 trials; {result['rounds']} rounds of {result['seconds']:.0f} s windows "
        "per server and client count, order rotating; medians. CPU per request is the "
        "server's processes' own (/proc); `other cores` is what the rest of the box ran in "
        "the window (PostgreSQL, the idle servers, other users), the load generator apart.",
        "",
        "| server | clients | requests/s | server CPU ms/request | server cores | other cores "
        "| load avg | non-200 | 5xx |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, per in s["medians"].items():
        for c, m in per.items():
            lines.append(
                f"| {name} | {c} | {m['requests_per_s']:.0f} | "
                f"{m['server_cpu_ms_per_request']:.2f} | {m['server_cores']:.2f} | "
                f"{m['other_cores']:.2f} | {m['loadavg_1min_before']:.1f} | "
                f"{m['non_200']:.0f} | {m['5xx']:.0f} |"
            )
    lines += [
        "",
        "| clients | CPU/request ours ÷ minimal | requests/s workers 2 ÷ 1 |",
        "|---|---|---|",
    ]
    for c, r in s["ratios"].items():
        lines.append(
            f"| {c} | {r['cpu_per_request_ours_over_minimal']:.2f} | "
            f"{r['requests_per_s_workers2_over_one']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--tag", help="results go to bench/results/api-baseline-TAG.{md,json}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            clients=args.clients, rounds=args.rounds, seconds=args.seconds, workdir=Path(tmp)
        )
    result |= {"commit": commit(), "machine": machine("loopback")}
    result["summary"] = summarise(result)
    text = markdown(result)
    save(f"api-baseline-{args.tag}" if args.tag else "api-baseline", result, text)
    print(text)


if __name__ == "__main__":
    main()
