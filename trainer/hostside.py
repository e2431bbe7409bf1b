"""The host half of the launcher's contract: start, wrap, state, follow, stop. Standard library only.

The launcher reaches a host with one `python -m trainer <command>` per round trip and reads
JSON back, so nothing but Python has to be installed there and no shell parsing is involved.

    start RUN_DIR            stdin: {"run": {...run.json...}, "env": {...}}; creates the run, detaches the wrapper
    wrap RUN_DIR             the detached wrapper: runs the trainer, records pid and exit_code however it ends
    state RUN_DIR...         one JSON line per run: state, exit code, progress
    follow RUN_DIR LOG EV [once]  stream new train.log bytes and events from byte offsets until the job ends
    stop RUN_DIR GRACE       SIGTERM to the job's process group, SIGKILL after GRACE seconds
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.gpus import GpuError, claim_gpus
from trainer.interpreter import no_stack_message, training_python
from trainer.pushed import copy_info, trainer_argv
from trainer.workers import process_count, run_workers

RUN_FILE = "run.json"
PID_FILE = "pid"
EXIT_FILE = "exit_code"
STOP_FILE = "stop_requested"
ENV_FILE = "env.json"
LOG_FILE = "train.log"
EVENTS_FILE = "events.jsonl"
WRAPPER_LOG = "wrapper.log"
LOCK_FDS_ENV = "GPURUN_LOCK_FDS"
STARTING_GRACE_S = 30.0  # a run without a pid file this young is still starting, not lost
POLL_S = 0.2
HEARTBEAT_S = 5.0


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    handlers = {"start": cmd_start, "wrap": cmd_wrap, "state": cmd_state, "follow": cmd_follow, "stop": cmd_stop}
    if command not in handlers:
        print(f"unknown command {command!r}; one of: run, {', '.join(handlers)}", file=sys.stderr)
        return 2
    return handlers[command](rest)


# ---------------------------------------------------------------- start / wrap


def cmd_start(args: list[str]) -> int:
    run_dir = Path(args[0])
    payload = json.load(sys.stdin)
    if training_python() is None:
        message, hint = no_stack_message()
        _reply({"error": message, "hint": hint})
        return 1
    run = payload["run"]
    try:
        claim = claim_gpus(run.get("gpus"), run["run_id"], force=bool(run.get("force")))
    except GpuError as exc:
        _reply({"error": exc.message, "hint": exc.hint})
        return 1
    run["gpus"] = claim.visible
    # Resolved here, once: a `~/gpurun` workdir reaches the host relative to the login's home.
    run["workdir"] = str(run_dir.resolve().parent.parent)
    run.update(copy_info())  # the trainer that will run: the copy the launcher pushed, by path and version
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        _reply({"error": f"run directory {run_dir} already exists"})
        return 1
    (run_dir / "output").mkdir()  # exists from the start, so a pull --watch before step 1 finds it
    _write_atomic(run_dir / RUN_FILE, json.dumps(run, indent=2, ensure_ascii=False))
    # Secrets travel in this 0600 file, never on a command line or in run.json.
    fd = os.open(run_dir / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload.get("env", {}), fh)
    with open(run_dir / WRAPPER_LOG, "ab") as log:
        proc = subprocess.Popen(
            trainer_argv(sys.executable, "wrap", str(run_dir.resolve())),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: its own process group, immune to the ssh session's SIGHUP
            pass_fds=claim.fds,  # the GPU locks live as long as the job does
            env={**os.environ, LOCK_FDS_ENV: ",".join(map(str, claim.fds))},
        )
    # Wait briefly for the wrapper to record itself, so `status` right after says running.
    deadline = time.time() + 10
    while time.time() < deadline and not (run_dir / PID_FILE).exists() and proc.poll() is None:
        time.sleep(0.02)
    _reply({"pid": proc.pid, "state": run_state(run_dir)["state"], "gpus": claim.visible, "warnings": claim.warnings})
    return 0


def cmd_wrap(args: list[str]) -> int:
    run_dir = Path(args[0])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    lock_fds = [int(fd) for fd in os.environ.pop(LOCK_FDS_ENV, "").split(",") if fd]
    env = dict(os.environ)
    env.update(json.loads((run_dir / ENV_FILE).read_text(encoding="utf-8")))
    env["PYTHONUNBUFFERED"] = "1"
    gpus = record.get("gpus")
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    me = os.getpid()
    _write_atomic(
        run_dir / PID_FILE,
        json.dumps({"pgid": os.getpgid(me), "pid": me, "marker": process_marker(me), "boot_id": boot_id()}),
    )
    python = training_python() or sys.executable
    argv = trainer_argv(python, "run", str(run_dir))
    exit_code = run_workers(argv, env, process_count(gpus), run_dir, LOG_FILE, lock_fds)
    _write_atomic(run_dir / EXIT_FILE, f"{exit_code}\n")
    return 0


# ---------------------------------------------------------------- state


def process_marker(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the boot id, no reused pid matches it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _alive(info: dict) -> bool:
    pid = info.get("pid")
    if not isinstance(pid, int):
        return False
    if info.get("boot_id") and info["boot_id"] != boot_id():
        return False  # the host rebooted since
    marker = process_marker(pid)
    if marker is not None or info.get("marker") is not None:
        return marker == info.get("marker")
    try:  # no /proc (macOS host): fall back to existence
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_state(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    out: dict = {"run_id": run_dir.name}
    if not (run_dir / RUN_FILE).exists():
        out["state"] = "not_found"
        return out
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        out.update(task=record.get("task"), started_at=record.get("started_at"), gpus=record.get("gpus"))
    except (OSError, ValueError):
        pass
    exit_text = _read(run_dir / EXIT_FILE)
    if exit_text is not None and exit_text.strip():
        code = int(exit_text.strip())
        out["exit_code"] = code
        out["ended_at"] = (run_dir / EXIT_FILE).stat().st_mtime
        if (run_dir / STOP_FILE).exists():
            out["state"] = "stopped"
        else:
            out["state"] = "succeeded" if code == 0 else "failed"
    else:
        pid_text = _read(run_dir / PID_FILE)
        if pid_text is None:
            young = time.time() - (run_dir / RUN_FILE).stat().st_mtime < STARTING_GRACE_S
            out["state"] = "running" if young else "lost"
        else:
            out["state"] = "running" if _alive(json.loads(pid_text)) else "lost"
    out.update(_progress(run_dir / EVENTS_FILE))
    return out


def _progress(path: Path) -> dict:
    """Latest step / loss / eval loss from events.jsonl (reads only its tail)."""
    progress: dict = {}
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return progress
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        for key in ("step", "total_steps"):
            if key in event:
                progress[key] = event[key]
        if "loss" in event:
            progress["loss"] = event["loss"]
        if "eval_loss" in event:
            progress["eval_loss"] = event["eval_loss"]
        if event.get("kind") == "eval_suite":
            progress["accuracy"] = event.get("accuracy")
            progress["baseline_accuracy"] = event.get("baseline_accuracy")
    return progress


def cmd_state(args: list[str]) -> int:
    for name in args:
        print(json.dumps(run_state(Path(name))), flush=True)
    return 0


# ---------------------------------------------------------------- follow


def cmd_follow(args: list[str]) -> int:
    """Stream {"log": text, "log_offset": n}, {"event": {...}, "events_offset": n}, then {"end": state}.

    Offsets are byte offsets after the data sent; the launcher reconnects with the last ones it
    saw, so after a dropped connection every line and event is shown exactly once. Only whole
    lines are ever sent.
    """
    run_dir, log_offset, events_offset = Path(args[0]), int(args[1]), int(args[2])
    once = args[3:] == ["once"]  # `gpurun logs` without -f: what there is now, then the state
    if log_offset < 0:  # `--tail N`: start N lines before the end
        log_offset = _tail_offset(run_dir / LOG_FILE, -log_offset)
    if not (run_dir / RUN_FILE).exists():
        _reply({"end": {"state": "not_found", "run_id": run_dir.name}})
        return 0
    last_beat = 0.0
    while True:
        state = run_state(run_dir)  # read before draining: anything written before the end is sent
        log_offset = _send_new(run_dir / LOG_FILE, log_offset, "log")
        events_offset = _send_new(run_dir / EVENTS_FILE, events_offset, "events")
        if state["state"] != "running" or once:
            _reply({"end": state})
            return 0
        if time.time() - last_beat > HEARTBEAT_S:
            _reply({"beat": time.time()})
            last_beat = time.time()
        time.sleep(POLL_S)


def _tail_offset(path: Path, lines: int) -> int:
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    end = data.rfind(b"\n")  # only whole lines count
    if end < 0:
        return 0
    position = end
    for _ in range(lines):
        position = data.rfind(b"\n", 0, position)
        if position < 0:
            return 0
    return position + 1


def _send_new(path: Path, offset: int, kind: str) -> int:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(1 << 20)
    except OSError:
        return offset
    end = data.rfind(b"\n")
    if end < 0:
        return offset
    chunk = data[: end + 1]
    offset += len(chunk)
    text = chunk.decode("utf-8", "replace")
    if kind == "log":
        _reply({"log": text, "log_offset": offset})
    else:
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        _reply({"events": events, "events_offset": offset})
    return offset


# ---------------------------------------------------------------- stop


def cmd_stop(args: list[str]) -> int:
    run_dir, grace = Path(args[0]), float(args[1])
    state = run_state(run_dir)
    if state["state"] != "running":
        _reply(state)
        return 0
    _write_atomic(run_dir / STOP_FILE, f"{time.time()}\n")
    info = json.loads(_read(run_dir / PID_FILE) or "{}")
    pgid = info.get("pgid")
    if not pgid or not _alive(info):
        _reply(run_state(run_dir))
        return 0
    # SIGTERM to the wrapper alone: it forwards one SIGTERM to the trainer, which saves and exits.
    try:
        os.kill(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.time() + grace
    while time.time() < deadline and run_state(run_dir)["state"] == "running":
        time.sleep(0.2)
    if run_state(run_dir)["state"] == "running":
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.5)
        if not (run_dir / EXIT_FILE).exists():  # the wrapper died with the group: record it ourselves
            _write_atomic(run_dir / EXIT_FILE, f"{128 + signal.SIGKILL}\n")
    _reply(run_state(run_dir))
    return 0


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- helpers


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
