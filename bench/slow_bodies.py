"""An owner's reads while connections trickle request bodies (issue 33, 3).

    python -m bench.slow_bodies [--tricklers 0 40] [--reads 50] [--tag TAG]

Starts its own PostgreSQL cluster and `hpo serve` with its default limits, registers one study,
then per scenario opens N connections that send the headers of an enqueue
(`POST /studies/{name}/trials`, Content-Length 100000) and one body byte every 0.2 s, without
a token or with another owner's valid token, and times the owner's sequential
`GET /studies/{name}` meanwhile. Writes bench/results/slow-bodies[-TAG].{md,json}: statuses,
median and max latency, and how many tricklers were refused at once or were still trickling
after the reads.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import commit, machine, save
from hpo.core.migrate import upgrade
from tests.pg import PostgresCluster, _free_port
from tests.specs import minimal_spec
from tests.workers import wait_healthy

STUDY = "owner-study"


def _trickle(
    port: int, count: int, token: str | None, stop: threading.Event
) -> list[socket.socket]:
    """``count`` connections sending an enqueue's headers, then a body byte every 0.2 s."""
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    for sock in sockets:
        sock.sendall(
            f"POST /studies/{STUDY}/trials HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + auth
            + b"Content-Length: 100000\r\n\r\n{"
        )

    def trickle() -> None:
        while not stop.wait(0.2):
            for sock in _unanswered(sockets):
                try:
                    sock.send(b" ")
                except OSError:
                    continue

    threading.Thread(target=trickle, daemon=True).start()
    return sockets


def _unanswered(sockets: list[socket.socket]) -> list[socket.socket]:
    if not sockets:
        return []
    readable, _, _ = select.select(sockets, [], [], 0)
    return [s for s in sockets if s not in readable]


def scenario(
    base: str, port: int, owner: str, count: int, token: str | None, reads: int
) -> dict[str, Any]:
    stop = threading.Event()
    sockets = _trickle(port, count, token, stop)
    try:
        time.sleep(2)  # let the server take in every trickler's headers
        refused_at_once = count - len(_unanswered(sockets))
        latencies, statuses = [], Counter[int]()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {owner}"}) as http:
            for _ in range(reads):
                started = time.perf_counter()
                statuses[http.get(f"/studies/{STUDY}", timeout=60).status_code] += 1
                latencies.append((time.perf_counter() - started) * 1000)
        still = len(_unanswered(sockets))
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
    return {
        "tricklers": count,
        "trickler_token": "valid (another owner's)" if token else "none",
        "reads": reads,
        "statuses": dict(statuses),
        "median_ms": float(np.median(latencies)),
        "max_ms": float(np.max(latencies)),
        "refused_at_once": refused_at_once,
        "still_trickling_after_reads": still,
    }


def run(tricklers: list[int], reads: int, workdir: Path) -> list[dict[str, Any]]:
    cluster = PostgresCluster()
    proc = None
    try:
        url = cluster.url()
        upgrade(url)
        port = _free_port()
        env = dict(os.environ, HPO_DATABASE_URL=url, HPO_ARTIFACT_DIR=str(workdir / "artifacts"))
        with (workdir / "api.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hpo", "serve", "--port", str(port), "--no-migrate"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)

        def token(name: str) -> str:
            hpo = [sys.executable, "-m", "hpo", "token", "create", name, "--owner", name]
            return subprocess.run(hpo, env=env, capture_output=True, text=True, check=True).stdout

        owner, other = token("alice").strip(), token("mallory").strip()
        headers = {"Authorization": f"Bearer {owner}"}
        httpx.post(f"{base}/studies", json=minimal_spec(STUDY), headers=headers).raise_for_status()
        for _ in range(10):  # warm the process and its pools before timing
            httpx.get(f"{base}/studies/{STUDY}", headers=headers).raise_for_status()
        results = []
        for count in tricklers:
            for trickler_token in (None, other) if count else (None,):
                results.append(scenario(base, port, owner, count, trickler_token, reads))
                time.sleep(1)  # the closed tricklers' slots come back
        return results
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tricklers", type=int, nargs="+", default=[0, 40])
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--tag", help="results go to bench/results/slow-bodies-TAG.{md,json}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args.tricklers, args.reads, Path(tmp))
    load = os.getloadavg()[0]
    result = {"commit": commit(), "machine": machine("loopback"), "load": load, "rows": rows}
    lines = [
        "# An owner's reads while connections trickle bodies",
        "",
        f"Commit `{result['commit']}`, {result['machine']}, load average {load:.1f} (shared "
        "machine): `hpo serve` with its default limits on its own PostgreSQL; the owner reads "
        "`GET /studies/{name}` one after another while N connections trickle an enqueue's body "
        "(one byte every 0.2 s), without a token or with another owner's valid one.",
        "",
        "| tricklers | their token | reads | statuses | median ms | max ms "
        "| refused at once | still trickling after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        statuses = ", ".join(f"{n} x {code}" for code, n in sorted(r["statuses"].items()))
        lines.append(
            f"| {r['tricklers']} | {r['trickler_token']} | {r['reads']} | {statuses} | "
            f"{r['median_ms']:.1f} | {r['max_ms']:.1f} | {r['refused_at_once']} | "
            f"{r['still_trickling_after_reads']} |"
        )
    stem = f"slow-bodies-{args.tag}" if args.tag else "slow-bodies"
    save(stem, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
