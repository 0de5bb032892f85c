"""A throwaway one-node SLURM cluster (munged, slurmctld, slurmd) for the tests, as root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.pg import _free_port

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
NODE = "hpotest"


def missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "slurmctld and slurmd run as root in this test"
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    absent = [name for name in BINARIES if shutil.which(name, path=path) is None]
    if absent:
        names = ", ".join(absent)
        return f"SLURM/munge binaries not found ({names}): apt-get install slurm-wlm munge"
    return None


class SlurmCluster:
    """Daemons in the foreground under a temporary folder; ``env`` points clients at them."""

    def __init__(self) -> None:
        self.path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
        self.root = Path(tempfile.mkdtemp(prefix="hpo-slurm-"))
        self.env = {**os.environ, "PATH": self.path, "SLURM_CONF": str(self.root / "slurm.conf")}
        self.daemons: list[subprocess.Popen[bytes]] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o700)
        socket_path = munge / "munge.sock"
        self._run("mungekey", "--create", f"--keyfile={munge / 'munge.key'}")
        self._daemon(
            "munged",
            "--foreground",
            "--force",
            f"--socket={socket_path}",
            f"--key-file={munge / 'munge.key'}",
            f"--log-file={munge / 'log'}",
            f"--pid-file={munge / 'pid'}",
            f"--seed-file={munge / 'seed'}",
        )
        self._wait(socket_path.exists, "munged")
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir()
        (self.root / "slurm.conf").write_text(self._conf(socket_path))
        self._daemon("slurmctld", "-D", "-i")
        self._daemon("slurmd", "-D", "-N", NODE)
        self._wait(lambda: "idle" in self._run("sinfo", "-h", "-o", "%T"), "the node to be idle")

    def _conf(self, munge_socket: Path) -> str:
        host = socket.gethostname().split(".")[0]
        root = self.root
        return f"""\
ClusterName=hpotest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=30
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""

    def _daemon(self, *cmd: str) -> None:
        log = (self.root / f"{cmd[0]}.out").open("wb")
        self.daemons.append(
            subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        )

    def _run(self, *cmd: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
        return done.stdout

    def _wait(self, ready: Callable[[], object], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except RuntimeError:
                pass  # not answering yet
            if any(d.poll() is not None for d in self.daemons):
                break
            time.sleep(0.2)
        logs = {
            p.name: p.read_text()[-1500:]
            for p in self.root.glob("**/*")
            if p.is_file() and p.suffix in (".out", ".log") or p.name == "log"
        }
        raise RuntimeError(f"{what}: not ready; logs: {logs}")

    def sbatch(self, *args: str, env: dict[str, str]) -> str:
        """Submit; returns the job id."""
        return self._run("sbatch", "--parsable", *args, env=env).strip().split(";")[0]

    def scancel(self, job: str) -> None:
        self._run("scancel", job)

    def jobs(self, job: str) -> list[str]:
        """The job's array tasks still pending or running, as ``JOBID_TASK``."""
        return self._run("squeue", "-h", "-j", job, "-o", "%i").split()

    def stop(self) -> None:
        if self.daemons:  # jobs' slurmstepd processes would outlive slurmd
            try:
                self._run("scancel", "--user", "root")
                self._wait(lambda: not self._run("squeue", "-h").strip(), "jobs to end", 60)
            except RuntimeError:
                pass  # the cluster never came up
        for daemon in reversed(self.daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(self.root, ignore_errors=True)
