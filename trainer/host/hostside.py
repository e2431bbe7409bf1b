"""The host half of the launcher's contract: start, wrap, state, follow, stop. Standard library only.

The launcher reaches a host with one `python -m trainer <command>` per round trip and reads
JSON back, so nothing but Python has to be installed there and no shell parsing is involved.

    start RUN_DIR            stdin: {"run": {...run.json...}, "env": {...}}; creates the run, detaches the wrapper
    wrap RUN_DIR             the detached wrapper: runs the trainer, records exit_code however it ends
    state RUN_DIR...         one JSON line per run: state, exit code, progress
    follow RUN_DIR LOG EV [once]  stream new train.log bytes and events from byte offsets until the job ends
    stop RUN_DIR GRACE       SIGTERM to the job's process group, SIGKILL after GRACE seconds
"""

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.checkpoints import latest_complete_checkpoint
from trainer.events import EventWriter
from trainer.host.gpus import GpuError, claim_gpus
from trainer.host.interpreter import no_stack_message, training_python
from trainer.host.torchrun import process_count, run_workers, trainer_processes
from trainer.pushed import copy_info, trainer_argv
from trainer.rundir import (
    ENV_FILE,
    EVENTS_FILE,
    EXIT_FILE,
    EXIT_KILLED,
    EXIT_STOPPED,
    LOG_FILE,
    PID_FILE,
    RESERVE_FILE,
    RUN_FILE,
    STOP_FILE,
    TRAINER_EXIT_FILE,
    WRAPPER_LOG,
)
from trainer.sizes import human_bytes

RESERVE_BYTES = 1 << 20
FULL_BELOW_BYTES = 1 << 20  # less free than this after a failure: the disk filled up
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
    try:
        return handlers[command](rest)
    except KeyboardInterrupt:  # Ctrl-C in `gpurun logs -f` on the local host reaches us too: no traceback
        return 130


# ---------------------------------------------------------------- start / wrap


def cmd_start(args: list[str]) -> int:
    run_dir = Path(args[0])
    # A connection that drops now must not cut a start in half: it finishes, and the laptop finds the run.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    payload = json.load(sys.stdin)
    if training_python() is None:
        message, hint = no_stack_message()
        _reply({"error": message, "hint": hint})
        return 1
    run = payload["run"]
    # Resolved here, once: a `~/gpurun` workdir reaches the host relative to the login's home.
    workdir = run_dir.resolve().parent.parent
    refusal = free_space_refusal(workdir, run.get("config") or {}, {**os.environ, **payload.get("env", {})})
    if refusal is not None:
        _reply(refusal)
        return 1
    if run.get("slurm") is not None:  # a Slurm login node: sbatch, and the GPUs are Slurm's to choose
        from trainer.host.slurm import start_job

        return start_job(run_dir, run, payload.get("env", {}))
    try:
        claim = claim_gpus(run.get("gpus"), run["run_id"], force=bool(run.get("force")))
    except GpuError as exc:
        _reply({"error": exc.message, "hint": exc.hint})
        return 1
    run["gpus"] = claim.visible
    run["workdir"] = str(workdir)
    if run.get("nodes") and not run["nodes"].get("port"):  # node 0 of several hosts: its rendezvous port, free now
        run["nodes"]["port"] = _free_port()
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
    # Real blocks (not a sparse file), released only to write how the job ended on a full disk.
    with open(run_dir / RESERVE_FILE, "wb") as fh:
        fh.write(bytes(RESERVE_BYTES))
        fh.flush()
        os.fsync(fh.fileno())
    # The wrapper starts with SIGTERM blocked (a signal mask survives exec) and unblocks it once its handler is
    # in place: a `gpurun stop` in its first milliseconds is then handled, never the default death.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
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
    # Recorded here rather than by the wrapper, so no moment exists where the job runs but `stop` cannot find it.
    # With start_new_session the wrapper leads its own process group: pgid == pid; the trainers inherit it.
    _write_atomic(
        run_dir / PID_FILE,
        json.dumps({"pgid": proc.pid, "pid": proc.pid, "marker": process_marker(proc.pid), "boot_id": boot_id()}),
    )
    reply = {"pid": proc.pid, "state": run_state(run_dir)["state"], "gpus": claim.visible, "warnings": claim.warnings}
    if run.get("nodes"):
        reply["rdzv_port"] = run["nodes"]["port"]
    _reply(reply)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def cmd_wrap(args: list[str]) -> int:
    run_dir = Path(args[0])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # A stop that arrives before the trainers exist is kept here and honoured (start blocked SIGTERM until now).
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stopping.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if not (run_dir / PID_FILE).exists():  # `start` died (its connection dropped) before it could write it
        me = os.getpid()
        info = {"pgid": os.getpgid(me), "pid": me, "marker": process_marker(me), "boot_id": boot_id()}
        _write_atomic(run_dir / PID_FILE, json.dumps(info))
    record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    lock_fds = [int(fd) for fd in os.environ.pop(LOCK_FDS_ENV, "").split(",") if fd]
    env = dict(os.environ)
    env.update(json.loads((run_dir / ENV_FILE).read_text(encoding="utf-8")))
    env["PYTHONUNBUFFERED"] = "1"
    gpus = record.get("gpus")
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    python = training_python() or sys.executable
    argv = trainer_argv(python, "run", str(run_dir))
    if stopping or (run_dir / STOP_FILE).exists():
        exit_code = EXIT_STOPPED  # stopped before the trainers started: they never do
    else:
        count, nodes = process_count(gpus), record.get("nodes")
        exit_code = run_workers(argv, env, count, run_dir, LOG_FILE, lock_fds, stopping, nodes=nodes)
    record_end(run_dir, exit_code)
    return 0


def record_end(run_dir: Path, exit_code: int) -> None:
    """Write how the job ended (exit_code), with what the trainer could not say itself: a full disk, a stop."""
    stopped = (run_dir / STOP_FILE).exists()
    if exit_code != 0 and not stopped and free_bytes(run_dir) < FULL_BELOW_BYTES:
        if not _has_event(run_dir, "error", NO_SPACE):
            note_disk_full(run_dir, None)  # e.g. torch's "file write failed", which never names the cause
    release_reserve(run_dir)
    if stopped and not _has_event(run_dir, "stopped"):
        # The trainer was stopped before it could catch SIGTERM (still starting), or was killed after the grace.
        checkpoint = latest_complete_checkpoint(run_dir / "output")
        step = _progress(run_dir / EVENTS_FILE).get("step", 0)
        EventWriter(run_dir / EVENTS_FILE).emit(
            "stopped", step=step, checkpoint=checkpoint.name if checkpoint else None
        )
    _write_atomic(run_dir / EXIT_FILE, f"{exit_code}\n")


# ---------------------------------------------------------------- disk space

NO_SPACE = "no space left on device"


def free_bytes(path: Path) -> int:
    """Free bytes for this user on the filesystem holding path (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def release_reserve(run_dir: Path) -> None:
    try:
        (Path(run_dir) / RESERVE_FILE).unlink()
    except FileNotFoundError:
        pass


def is_disk_full(exc: BaseException, run_dir: Path) -> bool:
    """Whether a failure was the disk filling up: ENOSPC anywhere in the chain, or (torch's C++ writer says only
    "file write failed") a disk with next to nothing left."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if NO_SPACE in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return free_bytes(run_dir) < FULL_BELOW_BYTES


def note_disk_full(run_dir: Path, path: str | None) -> str:
    """Say in train.log and events.jsonl that the disk is full, and where; the reserve makes room to say it."""
    run_dir = Path(run_dir)
    workdir = run_dir.parent.parent
    free = free_bytes(run_dir)  # what the run had left, measured before the reserve is given back
    release_reserve(run_dir)
    message = f"{NO_SPACE}: could not write {path or run_dir} ({human_bytes(free)} free in {workdir})"
    hint = f"free some space in {workdir} (or lower training.save_total_limit), then train again"
    if latest_complete_checkpoint(run_dir / "output") is not None:
        hint += f"; `gpurun train --resume {run_dir.name}` continues from its last complete checkpoint"
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log:
        log.write(f"error: {message}\nhint: {hint}\n")
    EventWriter(run_dir / EVENTS_FILE).emit("error", message=message, hint=hint, problems=[message])
    return message


def free_space_refusal(workdir: Path, config: dict, env: dict) -> dict | None:
    """The reply refusing a run whose checkpoints would not fit in the workdir, or None (enough room, or unknown)."""
    need = checkpoint_bytes_needed(config, workdir, env)
    if need is None:
        return None  # the base model's shape is not readable here: better no check than a wild guess
    free = free_bytes(workdir)
    if free >= need:
        return None
    return {
        "error": f"not enough free space in {workdir}: {human_bytes(free)} free, "
        f"the run's checkpoints need about {human_bytes(need)}",
        "hint": "free some space, lower training.save_total_limit, or use another workdir",
    }


# Every linear layer `all-linear` adapts in a decoder block, as (in, out) features from config.json.
def _linear_shapes(cfg: dict) -> dict[str, tuple[int, int]] | None:
    try:
        hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError):
        return None
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def trained_parameters(config: dict, model_cfg: dict) -> int | None:
    """How many parameters the run trains: LoRA's A and B (r x in + out x r) per adapted layer, or every weight."""
    model_cfg = model_cfg.get("text_config") or model_cfg
    shapes = _linear_shapes(model_cfg)
    layers = model_cfg.get("num_hidden_layers")
    if shapes is None or not isinstance(layers, int):
        return None
    lora = config.get("lora")
    if not lora:  # full fine-tune: the blocks plus the embeddings (and an untied output layer)
        vocab = int(model_cfg.get("vocab_size") or 0)
        embeddings = vocab * model_cfg["hidden_size"] * (1 if model_cfg.get("tie_word_embeddings") else 2)
        return layers * sum(i * o for i, o in shapes.values()) + embeddings
    targets = lora.get("target_modules") or ["all-linear"]
    targets = [targets] if isinstance(targets, str) else targets
    names = list(shapes) if "all-linear" in targets else [t for t in targets if t in shapes]
    if not names:
        return None  # module names this estimate does not know (another architecture)
    return layers * sum(int(lora.get("r") or 0) * (shapes[n][0] + shapes[n][1]) for n in names)


def checkpoint_bytes_needed(config: dict, workdir: Path, env: dict) -> int | None:
    """About what the run writes: the checkpoints kept (weights + optimizer state + tokenizer) and the final adapter."""
    base = base_model_dir(str(config.get("base_model") or ""), workdir, env)
    if base is None:
        return None
    try:
        model_cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    params = trained_parameters(config, model_cfg)
    if params is None:
        return None
    training = config.get("training") or {}
    weight_bytes = 4  # LoRA weights train in fp32 whatever the base's dtype (PEFT upcasts them)
    if not config.get("lora") and (training.get("bf16") or training.get("fp16")):
        weight_bytes = 2
    optim = str(training.get("optim") or "adamw_torch")
    if "8bit" in optim:
        moment_bytes = 2  # two 1-byte moments
    elif "adafactor" in optim or "sgd" in optim:
        moment_bytes = 0  # factored (a few rows and columns), or no momentum
    else:
        moment_bytes = 2 * weight_bytes  # Adam's two moments, in the weights' dtype
    tokenizer = sum(f.stat().st_size for f in base.iterdir() if f.is_file() and TOKENIZER_PARTS.search(f.name))
    per_checkpoint = params * (weight_bytes + moment_bytes)
    # Each checkpoint also holds the tokenizer, and ~100 kB of state: rng, scheduler, trainer_state, args, model card.
    per_checkpoint += tokenizer + 128_000
    kept = checkpoints_kept(training)
    if kept is None:
        return None
    return kept * per_checkpoint + params * weight_bytes + tokenizer + 64_000


TOKENIZER_PARTS = re.compile(r"token|vocab|merges|chat_template")


def checkpoints_kept(training: dict) -> int | None:
    """How many checkpoints exist at once at most: save_total_limit, or every save when that is fewer."""
    strategy = training.get("save_strategy") or "steps"
    if strategy == "no":
        return 0
    limit = training.get("save_total_limit")
    saves = None
    max_steps = training.get("max_steps") or -1
    if strategy == "steps" and max_steps > 0 and training.get("save_steps"):
        every = training["save_steps"]
        every = every * max_steps if every < 1 else every  # a fraction of the total steps
        saves = math.ceil(max_steps / every)
    elif strategy == "epoch" and max_steps <= 0:
        saves = math.ceil(training.get("num_train_epochs") or 1)
    if limit and limit > 0:
        return min(limit, saves) if saves is not None else limit
    return saves


def base_model_dir(base_model: str, workdir: Path, env: dict) -> Path | None:
    """The folder holding the base model's config.json on this host, when it is there to read."""
    from trainer.builtin.tiny import BUILTIN_PREFIX, TINY_VERSION

    if base_model.startswith(BUILTIN_PREFIX):
        # Where trainer/train.py builds it: $GPURUN_CACHE/models, else <workdir>/cache/models.
        cache = Path(env["GPURUN_CACHE"]) / "models" if env.get("GPURUN_CACHE") else workdir / "cache" / "models"
        folder = cache / f"builtin-{base_model[len(BUILTIN_PREFIX) :]}-v{TINY_VERSION}"
        return folder if (folder / "config.json").is_file() else None
    local = Path(base_model).expanduser()
    if local.is_absolute():
        return local if (local / "config.json").is_file() else None
    if base_model.count("/") != 1:
        return None
    # The hub cache, as huggingface_hub lays it out: models--org--name/snapshots/<commit>/config.json.
    hub = env.get("HF_HUB_CACHE")
    if not hub:
        home = env.get("HF_HOME") or str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
        hub = str(Path(home) / "hub")
    repo = Path(hub).expanduser() / ("models--" + base_model.replace("/", "--"))
    ref = _read(repo / "refs" / "main")
    if ref and (repo / "snapshots" / ref.strip() / "config.json").is_file():
        return repo / "snapshots" / ref.strip()
    found = sorted(repo.glob("snapshots/*/config.json"))
    return found[-1].parent if found else None


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


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name: [0] state, [1] ppid, [2] pgrp, ..., [19] start time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> dict[int, int]:
    """{pid: parent pid} of every live process in the process group (zombies are already dead)."""
    members = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                members[int(entry.name)] = int(fields[1])
    return members


def job_alive(info: dict) -> bool:
    """Whether any process of the job lives: the wrapper, or trainers it left behind when it was killed alone."""
    pid, pgid = info.get("pid"), info.get("pgid") or info.get("pid")
    if not isinstance(pid, int) or not isinstance(pgid, int):
        return False
    if info.get("boot_id") and info["boot_id"] != boot_id():
        return False  # the host rebooted since
    if not Path("/proc/self/stat").exists():  # no /proc (macOS host): does the group exist at all
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    marker = process_marker(pid)
    if marker is not None:
        # Linux never hands out a pid that is still some live process's group id: while our group lives, the
        # number is our wrapper's or nobody's. Anyone else holding it means our group ended and it was reused.
        return marker == info.get("marker")
    return bool(group_members(pgid))


def trainer_exit_name(rank: int) -> str:
    return TRAINER_EXIT_FILE if rank == 0 else f"{TRAINER_EXIT_FILE}.rank{rank}"


def write_trainer_exit(run_dir: Path, rank: int, code: int) -> None:
    """The trainer's own last word (written by trainer/train.py on its way out), for when no wrapper survives to
    write exit_code. On a full disk the file may fail to appear: the run is then lost, which is the truth."""
    try:
        _write_atomic(Path(run_dir) / trainer_exit_name(rank), json.dumps({"code": code, "t": time.time()}))
    except OSError:
        pass


def trainers_ended(run_dir: Path, processes: int) -> dict | None:
    """{"code", "t"} merged from every trainer process's own record as the wrapper would (the first failure's code,
    else 0), or None when some process left no record and none recorded a failure: then nothing says how it ended."""
    records, missing = [], False
    for rank in range(processes):
        try:
            records.append(json.loads(_read(run_dir / trainer_exit_name(rank)) or ""))
        except ValueError:
            missing = True
    failures = sorted((r for r in records if r.get("code")), key=lambda r: r.get("t", 0))
    if failures:
        return failures[0]
    if missing or not records:
        return None
    return max(records, key=lambda r: r.get("t", 0))


def _pid_info(run_dir: Path) -> dict | None:
    try:
        return json.loads(_read(run_dir / PID_FILE) or "")
    except ValueError:
        return None


def run_state(run_dir: Path) -> dict:
    """The run's state from the files the host keeps: the wrapper's exit_code when it wrote one; else `running`
    while any process of the job lives; else how the trainers themselves said they ended; else `lost`."""
    run_dir = Path(run_dir)
    out: dict = {"run_id": run_dir.name}
    if not (run_dir / RUN_FILE).exists():
        out["state"] = "not_found"
        return out
    record: dict = {}
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        out.update(task=record.get("task"), started_at=record.get("started_at"), gpus=record.get("gpus"))
    except (OSError, ValueError):
        pass
    if record.get("slurm") is not None:
        from trainer.host.slurm import slurm_state

        live = slurm_state(run_dir, record)  # queued or running while Slurm says the job is not over
        if live is not None:
            out.update(live)
            out.update(_progress(run_dir / EVENTS_FILE))
            return out
    exit_text = _read(run_dir / EXIT_FILE)
    code, ended_at = None, None
    if exit_text is not None and exit_text.strip():
        code, ended_at = int(exit_text.strip()), (run_dir / EXIT_FILE).stat().st_mtime
    else:
        info = _pid_info(run_dir)
        young = time.time() - (run_dir / RUN_FILE).stat().st_mtime < STARTING_GRACE_S
        # torchrun's workers live in sessions of their own: the job lives while any of them does, too.
        if (info is None and young) or (info is not None and job_alive(info)) or trainer_processes(run_dir):
            out["state"] = "running"
        else:
            ended = trainers_ended(run_dir, process_count(record.get("gpus")))
            if ended is None:
                out["state"] = "lost"
            else:  # the wrapper was killed, yet the trainers said how they ended
                code, ended_at = int(ended["code"]), ended.get("t")
    if code is not None:
        out["exit_code"], out["ended_at"] = code, ended_at
        if (run_dir / STOP_FILE).exists():
            out["state"] = "stopped"
        else:
            out["state"] = "succeeded" if code == 0 else "failed"
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
            # a tool-call suite also scores the arguments (name right and arguments equal)
            progress["arguments_accuracy"] = event.get("arguments_accuracy")
            progress["baseline_arguments_accuracy"] = event.get("baseline_arguments_accuracy")
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
    last_beat, said = 0.0, None
    while True:
        state = run_state(run_dir)  # read before draining: anything written before the end is sent
        log_offset = _send_new(run_dir / LOG_FILE, log_offset, "log")
        events_offset = _send_new(run_dir / EVENTS_FILE, events_offset, "events")
        if state.get("queued") != said and (state.get("queued") or said):  # a Slurm job's wait, said once
            _reply({"status": state.get("queued") or f"running: job {state.get('job_id')} started"})
            said = state.get("queued")
        if state["state"] not in ("running", "queued") or once:
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
    if state["state"] not in ("running", "queued"):
        _reply(state)
        return 0
    if state.get("job_id"):  # a Slurm job: scancel, not signals to pids the login node cannot see
        from trainer.host.slurm import stop_job

        _reply(stop_job(run_dir, state, grace))
        return 0
    # Written first: a wrapper that has not started the trainers yet sees it and never does.
    _write_atomic(run_dir / STOP_FILE, f"{time.time()}\n")
    info, asked = _pid_info(run_dir), False
    deadline = time.time() + grace
    while time.time() < deadline and run_state(run_dir)["state"] == "running":
        info = info or _pid_info(run_dir)  # absent only while a `start` is between run.json and the pid file
        if info is not None and not asked:
            _ask_to_stop(info, run_dir)
            asked = True
        time.sleep(0.2)
    killed = False
    if run_state(run_dir)["state"] == "running" and info is not None:
        _signal_group(info.get("pgid") or info["pid"], signal.SIGKILL)
        _signal_each(trainer_processes(run_dir), signal.SIGKILL)  # torchrun's workers, outside the group
        killed = True
        gone_by = time.time() + 10
        while (job_alive(info) or trainer_processes(run_dir)) and time.time() < gone_by:
            time.sleep(0.1)
    if (
        not (run_dir / EXIT_FILE).exists()
        and not (info is not None and job_alive(info))
        and not trainer_processes(run_dir)
    ):
        # No wrapper is left to say how the job ended (killed with the group, or killed alone earlier): say it here,
        # from the trainers' own records when they left them.
        ended = trainers_ended(run_dir, process_count(run_state(run_dir).get("gpus")))
        record_end(run_dir, int(ended["code"]) if ended else EXIT_KILLED if killed else EXIT_STOPPED)
    _reply(run_state(run_dir))
    return 0


def _ask_to_stop(info: dict, run_dir: Path) -> None:
    """One SIGTERM to the wrapper, which forwards one to each trainer; they save a checkpoint and exit. When the
    wrapper is gone, to the processes it left behind: the group's processes whose parent is outside the group (the
    trainer, or the torchrun launcher that forwards it), or else torchrun's workers it left in their own sessions."""
    if process_marker(info["pid"]) == info.get("marker"):
        targets = [info["pid"]]
    else:
        members = group_members(info.get("pgid") or info["pid"])
        targets = [pid for pid, parent in members.items() if parent not in members]
        targets = targets or trainer_processes(run_dir)
    _signal_each(targets, signal.SIGTERM)


def _signal_each(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _has_event(run_dir: Path, kind: str, message_prefix: str = "") -> bool:
    """Whether events.jsonl's tail holds an event of this kind (and message)."""
    try:
        with (run_dir / EVENTS_FILE).open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return False
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("kind") == kind and str(event.get("message", "")).startswith(message_prefix):
            return True
    return False


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
