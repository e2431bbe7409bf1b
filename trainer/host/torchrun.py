"""The training processes of a run, started and watched by the wrapper.

One process (the CPU, one GPU) is started directly. Several (one per GPU, PyTorch DDP) are started by
PyTorch's own launcher, torchrun's elastic agent (`torch.distributed.run`), in a small launcher process
of ours (`elastic_main`, run with the training Python) that turns torchrun's outcome into what gpurun
promises: the failing rank's own exit code and last lines in train.log, not torchrun's generic 1, and a
`gpurun stop` that reaches every worker. Rank 0 writes train.log and the events; rank N writes
train.rankN.log (trainer/training/run.py points its own output there).

Everything but `elastic_main` is standard library only: the wrapper imports it.
"""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from trainer.host.exits import trainers_ended
from trainer.host.processes import proc_stat, signal_each
from trainer.pushed import BOOTSTRAP
from trainer.rundir import EXIT_STOPPED, LOG_FILE, RUN_FILE

PEER_GRACE_S = 60  # after one worker ends (failed, or stopped and saved): how long its peers get before SIGKILL
JOIN_TIMEOUT_S = 120  # the rendezvous: every worker of one host has joined well before this, or the run fails
NODES_JOIN_TIMEOUT_S = 60  # several hosts: every node's agent has reached node 0's store by then, or the run fails
TAIL_LINES = 20

# `python -c ELASTIC_BOOTSTRAP ROOT COUNT WORKER_ARGV...`: the launcher process, from the same trainer copy.
ELASTIC_BOOTSTRAP = (
    "import os, sys; sys.path.insert(0, os.path.abspath(sys.argv.pop(1))); "
    "from trainer.host.torchrun import elastic_main; sys.exit(elastic_main(sys.argv[1:]))"
)


def process_count(gpus: str | None) -> int:
    """One process per visible GPU ("0,2" -> 2); one on the CPU."""
    return len([g for g in (gpus or "").split(",") if g.strip()]) or 1


def log_name(rank: int, main_log: str = LOG_FILE) -> str:
    return main_log if rank == 0 else f"train.rank{rank}.log"


def elastic_argv(argv: list[str], count: int) -> list[str]:
    """The launcher process that runs `count` copies of the trainer argv (`python -c BOOTSTRAP ROOT run RUN_DIR`)
    under torchrun: the same Python and the same trainer copy as the trainer itself."""
    python, root = argv[0], argv[3]
    return [python, "-c", ELASTIC_BOOTSTRAP, root, str(count), *argv]


def run_workers(
    argv: list[str],
    env: dict,
    count: int,
    run_dir: Path,
    main_log: str,
    pass_fds: list[int],
    stopping: list[int] | None = None,
    nodes: dict | None = None,
) -> int:
    """Run the trainer argv as `count` processes and wait; returns the run's exit code as a shell reports it.
    A run over several hosts (`nodes`, from run.json) always goes through torchrun, even at one process here.

    `stopping` holds the signals that asked the run to stop so far (the caller's handler collected any that came
    before the child existed): they are forwarded as soon as it does.
    """
    if count > 1 or nodes:
        argv = elastic_argv(argv, count)
        # torchrun would set 1 and print a banner about it into train.log; the CPUs shared out is better.
        env = {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or str(max(1, _cpus() // count))}
    # The child starts with SIGTERM blocked (a signal mask survives exec): the trainer unblocks it once its handler
    # is in place (trainer/training/run.py's StopRequest), the launcher keeps it for its forwarding thread. A stop while
    # they still import is then a clean stop, not a death.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    with open(run_dir / main_log, "ab") as log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=run_dir,
            pass_fds=pass_fds,  # if the wrapper is killed, the child still holds the GPU locks
        )
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    stopping = stopping if stopping is not None else []

    def forward(signum, frame):  # let the trainers save and exit; we stay to record how it ended
        stopping.append(signum)
        if child.poll() is None:
            child.send_signal(signum)
        else:  # the launcher was killed alone (below): its workers are told directly
            signal_each(trainer_processes(run_dir), signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if stopping:  # came while the child was being started
        forward(stopping[0], None)
    code = child.wait()  # retried across our signal handler (PEP 475)
    if (count > 1 or nodes) and code < 0 and trainer_processes(run_dir):
        # torchrun's agent was killed alone; its workers, in sessions of their own, train on. The run lasts as
        # long as they do (a stop now reaches them directly), and ends as they themselves say it ended.
        while trainer_processes(run_dir):
            time.sleep(0.5)
        ended = trainers_ended(run_dir, count)
        if ended is not None:
            return int(ended["code"])
    return _shell_code(code)


def trainer_processes(run_dir: Path) -> list[int]:
    """Live trainer processes of this run, wherever they are: torchrun starts each worker in a session of its own,
    out of the wrapper's process group, so they are found by their command line (`... BOOTSTRAP ROOT run RUN_DIR`)."""
    wanted = os.fsencode(str(run_dir))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if argv[-2:] != [b"run", wanted] or BOOTSTRAP.encode() not in argv:
            continue
        fields = proc_stat(int(entry.name))
        if fields is not None and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _shell_code(code: int) -> int:
    return code if code >= 0 else 128 - code  # killed by signal N -> 128+N, as shells report it


# ---------------------------------------------------------------- the launcher process (training Python)


def elastic_main(args: list[str]) -> int:
    """`COUNT WORKER_ARGV...`: torchrun's elastic agent runs COUNT workers on this host; our exit code is the run's.

    A stop (SIGTERM) is forwarded to each worker by a thread of ours rather than by torchrun, whose own handling
    would give the workers only its shutdown timeout to save before SIGKILL; gpurun stop's --grace decides that.
    """
    count, worker_argv = int(args[0]), args[1:]
    run_dir = Path(worker_argv[-1])
    # The wrapper started us with SIGTERM blocked; it stays blocked in every thread torchrun starts, and in the
    # workers until their handler is in place, so only our thread ever receives it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    stopping = threading.Event()
    threading.Thread(target=_forward_stops, args=(run_dir, stopping), daemon=True).start()

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    options = torchrun_options(count, run_dir, _run_nodes(run_dir), worker_argv)
    try:
        run(get_args_parser().parse_args(options))
    except ChildFailedError as exc:
        if stopping.is_set():  # each worker saved and exited on the stop: not a failure
            return EXIT_STOPPED
        rank, failure = first_failure(exc.failures)
        code = _shell_code(failure.exitcode)
        print(failure_note(run_dir, rank, code), end="", flush=True)  # our stdout is train.log
        return code
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except Exception as exc:  # the rendezvous itself failed: torchrun's traceback says nothing a user can act on
        print(f"error: torchrun could not start the {count} training processes: {exc}", flush=True)
        return 1
    return 0


def torchrun_options(count: int, run_dir: Path, nodes: dict | None, worker_argv: list[str]) -> list[str]:
    """torchrun's arguments: one host's standalone rendezvous, or the run's place among several hosts (`nodes`:
    {"count", "rank", "addr", "port", "run_id"} from run.json)."""
    if nodes:
        # The static rendezvous: node r's workers get global ranks r*count.., so node 0 (whose output `pull` takes)
        # holds rank 0, which alone saves the adapter. c10d's dynamic rendezvous numbers nodes by hostname and pid
        # instead. Its TCPStore on node 0 waits `timeout` for every node: one that never comes fails the run then.
        where = [
            f"--nnodes={nodes['count']}",
            f"--node-rank={nodes['rank']}",
            "--rdzv-backend=static",
            f"--rdzv-endpoint={nodes['addr']}:{nodes['port']}",
            f"--rdzv-id={nodes['run_id']}",
            f"--rdzv-conf=timeout={NODES_JOIN_TIMEOUT_S}",
        ]
    else:
        where = ["--standalone", f"--rdzv-conf=join_timeout={JOIN_TIMEOUT_S}"]  # a c10d rendezvous on a free port
    return [
        *where,
        f"--nproc-per-node={count}",
        "--max-restarts=0",  # a failed worker fails the run: a restart would begin again from step 0
        f"--shutdown-timeout={PEER_GRACE_S}",
        "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT",  # SIGTERM is ours (above)
        f"--log-dir={run_dir / 'torchelastic'}",  # its error files, in the run rather than in /tmp
        "--no-python",
        *worker_argv,
    ]


def _run_nodes(run_dir: Path) -> dict | None:
    import json

    try:
        return json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")).get("nodes")
    except (OSError, ValueError):
        return None


def _forward_stops(run_dir: Path, stopping: threading.Event) -> None:
    """Wait for the stop's SIGTERM, then pass it to every worker, including any that torchrun starts later."""
    signal.sigwait({signal.SIGTERM})
    stopping.set()
    told: set[int] = set()
    while True:
        new = [pid for pid in trainer_processes(run_dir) if pid not in told]
        signal_each(new, signal.SIGTERM)
        told.update(new)
        time.sleep(0.5)


def first_failure(failures: dict) -> tuple[int, object]:
    """The cause among torchrun's failures: a death by signal (the peers of a killed worker exit with errors a
    moment later because it left), then an exit, then a SIGTERM (torchrun's own, to the peers of a failed worker:
    a consequence, whose timestamp can still come first); the earliest, then the lowest rank."""

    def order(rank: int) -> tuple:
        code = failures[rank].exitcode
        kind = 2 if code == -signal.SIGTERM else 0 if code < 0 else 1
        return kind, failures[rank].timestamp, rank

    rank = min(failures, key=order)
    return rank, failures[rank]


def failure_note(run_dir: Path, rank: int, code: int) -> str:
    """A failing worker's last lines, where the user is looking (train.log, shown by logs -f)."""
    if rank == 0:
        return ""  # its own lines are already there
    name = log_name(rank)
    try:
        tail = (run_dir / name).read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        tail = []
    return f"error: rank {rank} exited with {code}; the end of {name}:\n" + "".join(f"  {line}\n" for line in tail)
