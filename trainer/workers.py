"""One training process per GPU (PyTorch DDP), started and watched by the wrapper. Standard library only.

What `torchrun --standalone` does, kept in the wrapper we already trust with a run's life: the wrapper
starts the workers with the rendezvous variables PyTorch reads (MASTER_ADDR/PORT, WORLD_SIZE, RANK,
LOCAL_RANK), forwards `gpurun stop`'s SIGTERM to each, and when one worker fails stops the others
(they would wait for it in a collective forever). Rank 0 writes train.log and the events; rank N
writes train.rankN.log, whose tail lands in train.log if it fails.
"""

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

PEER_GRACE_S = 30.0  # after one worker fails: how long the others get to exit on SIGTERM
TAIL_LINES = 20


def process_count(gpus: str | None) -> int:
    """One process per visible GPU ("0,2" -> 2); one on the CPU."""
    return len([g for g in (gpus or "").split(",") if g.strip()]) or 1


def worker_envs(env: dict, count: int, port: int) -> list[dict]:
    if count == 1:
        return [env]
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(count)}
    rendezvous["LOCAL_WORLD_SIZE"] = str(count)
    return [{**env, **rendezvous, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(count)]


def log_name(rank: int, main_log: str) -> str:
    return main_log if rank == 0 else f"train.rank{rank}.log"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(
    argv: list[str],
    env: dict,
    count: int,
    run_dir: Path,
    main_log: str,
    pass_fds: list[int],
    stopping: list[int] | None = None,
) -> int:
    """Start `count` workers of argv and wait for all; returns the run's exit code (the first failure's).

    `stopping` holds the signals that asked the run to stop so far (the caller's handler collected any that came
    before the workers existed): they are forwarded as soon as the workers do.
    """
    envs = worker_envs(env, count, free_port() if count > 1 else 0)
    logs = [open(run_dir / log_name(rank, main_log), "ab") for rank in range(count)]  # noqa: SIM115
    # The workers start with SIGTERM blocked (a signal mask survives exec) and unblock it once their handler is in
    # place (trainer/train.py's StopRequest): a stop while they still import is a clean stop, not a death.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    children = [
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env,
            cwd=run_dir,
            pass_fds=pass_fds,  # if the wrapper is killed, the trainers still hold their GPUs
        )
        for log, worker_env in zip(logs, envs, strict=True)
    ]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    stopping = stopping if stopping is not None else []  # once `gpurun stop` arrived, exits are not failures

    def forward(signum, frame):  # let the trainers save and exit; we stay to record how it ended
        if frame is not None:
            stopping.append(signum)
        for child in children:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if stopping:  # came while the workers were being started
        forward(stopping[0], None)
    # Blocking wait: woken by the first worker to exit, so the one that failed first (the cause) is
    # told from the peers that fail a moment later because it left (a "connection reset"). Those
    # already gone when we wake are reaped together; a death by signal is taken as the cause.
    by_pid = {child.pid: rank for rank, child in enumerate(children)}
    first_failure, killer = None, None
    while any(child.returncode is None for child in children):
        ended = [os.wait()] + _already_ended()  # os.wait is retried across our signal handler (PEP 475)
        failed = []
        for pid, status in ended:
            if pid in by_pid:
                children[by_pid[pid]].returncode = os.waitstatus_to_exitcode(status)
                if children[by_pid[pid]].returncode != 0:
                    failed.append(by_pid[pid])
        if failed and first_failure is None and not stopping:
            first_failure = min(failed, key=lambda r: (children[r].returncode >= 0, failed.index(r)))
            if count > 1:
                _note_failure(run_dir, main_log, first_failure, children[first_failure].returncode)
                forward(signal.SIGTERM, None)  # the others would wait for it in a collective forever
                killer = threading.Timer(PEER_GRACE_S, forward, (signal.SIGKILL, None))
                killer.daemon = True
                killer.start()
    if killer is not None:
        killer.cancel()
    for log in logs:
        log.close()
    if first_failure is None:  # stopped: rank 0's code says how
        first_failure = next((r for r, c in enumerate(children) if c.returncode != 0), None)
    return _shell_code(children[first_failure].returncode) if first_failure is not None else 0


def _already_ended() -> list[tuple[int, int]]:
    """(pid, status) of every child that has ended by now, without waiting."""
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left at all
            return ended
        if pid == 0:  # the rest are still running
            return ended
        ended.append((pid, status))


def _note_failure(run_dir: Path, main_log: str, rank: int, code: int) -> None:
    """A failing worker's last lines, where the user is looking (train.log, shown by logs -f)."""
    if rank == 0:
        return
    name = log_name(rank, main_log)
    tail = (run_dir / name).read_text(errors="replace").splitlines()[-TAIL_LINES:]
    with open(run_dir / main_log, "a") as log:
        log.write(f"error: rank {rank} exited with {_shell_code(code)}; the end of {name}:\n")
        log.writelines(f"  {line}\n" for line in tail)


def _shell_code(code: int) -> int:
    return code if code >= 0 else 128 - code  # killed by signal N -> 128+N, as shells report it
