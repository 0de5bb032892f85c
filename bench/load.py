"""Bounded load on loopback: C concurrent clients list and read studies while W workers report.

    python -m bench.load [--clients 50] [--workers 4] [--seconds 30] [--routes ...] [--tag TAG]

Starts its own PostgreSQL cluster, `hpo serve` and `hpo worker` processes, then stops them
all. Writes bench/results/load[-TAG].{md,json}: requests, requests/s, errors (503s with
Retry-After apart: shed load, not failures), p50/p99 latency per route.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import commit, machine, save
from hpo.core.migrate import upgrade
from hpo.core.settings import Settings
from tests.pg import PostgresCluster, _free_port
from tests.workers import small_study, start_worker, wait_healthy, wait_until

ROUTES = ("GET /studies", "GET /studies/{name}", "GET /studies/{name}/trials")


def run(
    *,
    clients: int,
    workers: int,
    seconds: float,
    workdir: Path,
    routes: tuple[str, ...] = ROUTES,
) -> dict[str, Any]:
    """Run the load and return per-route latencies (ms), request and error counts."""
    cluster = PostgresCluster()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = cluster.url()
        upgrade(url)
        settings = Settings(
            database_url=url,
            artifact_dir=workdir / "artifacts",
            cache_dir=workdir / "cache",
            heartbeat_interval=2,
            grace_period=20,
        )
        port = _free_port()
        env = dict(os.environ, HPO_DATABASE_URL=url, HPO_ARTIFACT_DIR=str(settings.artifact_dir))
        with (workdir / "api.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "hpo", "serve", "--port", str(port), "--no-migrate"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        token = subprocess.run(
            [sys.executable, "-m", "hpo", "token", "create", "load"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        names = [f"load-{i}" for i in range(5)]
        for name in names:
            spec = small_study(name, budget={"max_trials": 10_000}, pruner={"type": "median"})
            httpx.post(f"{base}/studies", json=spec, headers=headers).raise_for_status()
        for i in range(workers):
            procs.append(start_worker(settings, workdir / f"worker{i}.log"))
        wait_until(
            lambda: (
                httpx.get(f"{base}/studies/{names[0]}", headers=headers).json()["trials"][
                    "finished"
                ]
                > 0
            ),
            timeout=600,
            what="a finished trial",
        )

        latencies: dict[str, list[float]] = {r: [] for r in routes}
        errors: list[str] = []
        shed: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def client(k: int) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
                i = 0
                while time.monotonic() < deadline:
                    route = routes[(k + i) % len(routes)]
                    name = names[(k + i) % len(names)]
                    path = route.split(" ")[1].format(name=name)
                    started = time.perf_counter()
                    try:
                        response = http.get(path, params={"limit": 50})
                        ok = response.status_code == 200
                        busy = response.status_code == 503 and "Retry-After" in response.headers
                        detail = f"{route} -> {response.status_code}"
                    except httpx.HTTPError as exc:
                        ok, busy, detail = False, False, f"{route} -> {type(exc).__name__}"
                    elapsed = (time.perf_counter() - started) * 1000
                    with lock:
                        latencies[route].append(elapsed)
                        if busy:
                            shed.append(detail)
                        elif not ok:
                            errors.append(detail)
                    i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        started_at = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed_s = time.monotonic() - started_at
        reported = sum(
            httpx.get(f"{base}/studies/{n}", headers=headers).json()["trials"]["finished"]
            for n in names
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()
    return {
        "clients": clients,
        "workers": workers,
        "seconds": seconds,
        "finished_trials_during_run": reported,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:10],
        "shed_503": len(shed),
        "requests_per_s": sum(map(len, latencies.values())) / elapsed_s,
        "routes": {
            route: {
                "requests": len(values),
                "requests_per_s": len(values) / elapsed_s,
                "p50_ms": float(np.percentile(values, 50)) if values else None,
                "p99_ms": float(np.percentile(values, 99)) if values else None,
            }
            for route, values in latencies.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--tag", help="results go to bench/results/load-TAG.{md,json}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            clients=args.clients,
            workers=args.workers,
            seconds=args.seconds,
            workdir=Path(tmp),
            routes=tuple(args.routes),
        )
    result["commit"] = commit()
    result["machine"] = machine("loopback")
    lines = [
        "# API under load",
        "",
        f"Commit `{result['commit']}`, {result['machine']}: {args.clients} concurrent clients for "
        f"{args.seconds:.0f} s while {args.workers} CPU workers trained and reported "
        f"({result['finished_trials_during_run']} trials finished in all). "
        f"{result['requests_per_s']:.0f} requests/s in all. Errors: {result['errors']}; "
        f"503 with Retry-After (shed): {result['shed_503']}. The load generator runs on the "
        "same cores; the machine is shared, so figures are noisy.",
        "",
        "| route | requests | requests/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for route, r in result["routes"].items():
        lines.append(
            f"| {route} | {r['requests']} | {r['requests_per_s']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    save(f"load-{args.tag}" if args.tag else "load", result, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
