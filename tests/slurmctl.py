"""A real one-node Slurm cluster on this machine, for the tests: munged, slurmctld and slurmd, all ours.

Everything lives under the test's tmp folder (munge key and socket, slurm.conf, state and spool folders,
logs, pids) and listens on ports of its own, so the system's munge and Slurm (if any) are never touched.
Slurm's client commands find this cluster through SLURM_CONF. Started and stopped by pid. Needs root
(SlurmUser=root, and munged checks who owns its key) and Debian's `slurm-wlm` + `munge` (scripts/setup.sh).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshd import free_port

SLURMCTLD = shutil.which("slurmctld") or "/usr/sbin/slurmctld"
SLURMD = shutil.which("slurmd") or "/usr/sbin/slurmd"
MUNGED = shutil.which("munged") or "/usr/sbin/munged"
PARTITION = "debug"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the cluster, or None. CI runs as root, where a missing install is a failure."""
    if os.geteuid() == 0:
        return None
    if not Path(SLURMCTLD).exists():
        return "no slurmctld and not root: `sudo bash scripts/setup.sh` installs slurm-wlm and munge"
    return "the test Slurm cluster runs its daemons as root (SlurmUser=root)"


@dataclass
class SlurmCluster:
    base: Path
    conf: Path
    node: str
    cpus: int
    pids: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**os.environ, **self.env}, capture_output=True, text=True, check=check)

    def idle(self) -> bool:
        out = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.split()
        return out == ["idle"]

    def squeue(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i %T %r", check=False).stdout.splitlines()

    def cancel_all(self) -> None:
        self.run("scancel", "--full", "-p", PARTITION, check=False)
        deadline = time.time() + 30
        while self.squeue() and time.time() < deadline:
            time.sleep(0.5)

    def stop(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + 10
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # our child that has exited but is not reaped yet: a zombie is not alive
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # not our child (a daemon that forked): /proc says whether it runs
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def slurm_conf(base: Path, node: str, cpus: int, munge_socket: Path) -> str:
    return "\n".join(
        [
            "ClusterName=gpuruntest",
            f"SlurmctldHost={node}",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            # cred_expire: how long a requeued job waits before it may start again (Slurm default: 120 s).
            f"AuthInfo=socket={munge_socket},cred_expire=10",
            "CredType=cred/munge",
            f"StateSaveLocation={base / 'state'}",
            f"SlurmdSpoolDir={base / 'spool'}",
            f"SlurmctldPidFile={base / 'slurmctld.pid'}",
            f"SlurmdPidFile={base / 'slurmd.pid'}",
            f"SlurmctldLogFile={base / 'slurmctld.log'}",
            f"SlurmdLogFile={base / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerParameters=sched_interval=2",
            "MinJobAge=300",  # finished jobs stay visible to squeue/scontrol for a while, as on real clusters
            "KillWait=10",
            f"NodeName={node} CPUs={cpus} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def start_cluster(base: Path) -> SlurmCluster:
    base.mkdir(parents=True, exist_ok=True)
    for name in ("state", "spool", "munge"):
        (base / name).mkdir(exist_ok=True)
    key = base / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    os.chmod(base / "munge", 0o700)
    munge_socket = base / "munge" / "munge.socket"
    node, cpus = socket.gethostname(), os.cpu_count() or 1
    conf = base / "slurm.conf"
    conf.write_text(slurm_conf(base, node, cpus, munge_socket))
    cluster = SlurmCluster(base=base, conf=conf, node=node, cpus=cpus)
    munged = subprocess.Popen(
        [
            MUNGED,
            "--force",
            "--foreground",
            f"--socket={munge_socket}",
            f"--key-file={key}",
            f"--pid-file={base / 'munge' / 'munged.pid'}",
            f"--log-file={base / 'munge' / 'munged.log'}",
            f"--seed-file={base / 'munge' / 'munged.seed'}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cluster.pids.append(munged.pid)
    _wait(lambda: munge_socket.exists(), 10, "munged did not start", base / "munge" / "munged.log")
    # -D: in the foreground, so the pid we hold is the daemon's; -i: ignore state left by an earlier cluster.
    for argv, log in (
        ([SLURMCTLD, "-D", "-i", "-f", str(conf)], "slurmctld"),
        ([SLURMD, "-D", "-f", str(conf)], "slurmd"),
    ):
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=open(base / f"{log}.out", "ab"),  # noqa: SIM115 - lives as long as the daemon
            stderr=subprocess.STDOUT,
            env={**os.environ, "SLURM_CONF": str(conf)},
            start_new_session=True,
        )
        cluster.pids.append(proc.pid)
    try:
        _wait(cluster.idle, 30, "the Slurm node did not become idle", base / "slurmctld.log")
    except RuntimeError:
        cluster.stop()
        raise
    return cluster


def _wait(ready, timeout: float, message: str, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"{message}:\n{tail}")
