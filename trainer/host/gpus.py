"""Which GPUs a job gets, and a per-GPU lock so no two jobs (of any user) ever share one. Stdlib only.

A lock is an flock on <lock dir>/gpu-<uuid>.lock, taken by `start` and inherited by the wrapper and
the trainer: the kernel releases it when the last of them exits, however it exits. The file holds
who has it, so a refusal can name the holder.
"""

import fcntl
import getpass
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Shared by every user of the host: world-writable with the sticky bit, like /tmp itself.
LOCK_DIR = Path(os.environ.get("GPURUN_LOCK_DIR", "/tmp/gpurun-gpu-locks"))
BUSY_MEMORY_FRACTION = 0.1  # more than this much memory in use means someone is on the GPU


class GpuError(Exception):
    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass
class Gpu:
    index: str
    uuid: str
    used_mib: float
    total_mib: float
    util: str
    pids: list[str]

    @property
    def busy(self) -> bool:
        return bool(self.pids) or self.used_mib > BUSY_MEMORY_FRACTION * max(self.total_mib, 1)


def query_gpus() -> list[Gpu] | None:
    """Every GPU with memory, utilisation and compute processes; None where there is no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    fields = "index,uuid,memory.used,memory.total,utilization.gpu"
    gpus_csv = _smi(f"--query-gpu={fields}", "--format=csv,noheader,nounits")
    apps_csv = _smi("--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader")
    pids: dict[str, list[str]] = {}
    for line in apps_csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0]:
            pids.setdefault(parts[0], []).append(parts[1])
    gpus = []
    for line in gpus_csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        index, uuid, used, total, util = parts[:5]
        gpus.append(Gpu(index, uuid, _float(used), _float(total), util, pids.get(uuid, [])))
    return gpus


def _smi(*args: str) -> str:
    proc = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30)
    return proc.stdout if proc.returncode == 0 else ""


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


@dataclass
class Claim:
    visible: str | None  # CUDA_VISIBLE_DEVICES; None leaves it alone, "" hides every GPU
    fds: list[int]  # lock file descriptors to hand to the wrapper
    warnings: list[str]


def claim_gpus(spec: str | None, run_id: str, force: bool = False) -> Claim:
    """Resolve `--gpus` and lock what it names.

    None leaves CUDA_VISIBLE_DEVICES alone; "auto" is one free GPU (a LoRA job's usual need, and
    two `auto` jobs then share a box); "2" is two free GPUs; "0,2" names them.
    """
    if spec is None or spec == "":
        return Claim(None, [], [])
    gpus = query_gpus()
    if gpus is None:
        return Claim("", [], ["no nvidia-smi on this host: training runs on the CPU"])
    by_index = {g.index: g for g in gpus}
    fds: list[int] = []
    try:
        if spec == "auto" or spec.isdigit():
            want = 1 if spec == "auto" else int(spec)
            chosen = _claim_free(gpus, want, run_id, fds)
        else:
            chosen = _claim_named(spec, by_index, run_id, force, fds)
    except GpuError:
        for fd in fds:
            os.close(fd)
        raise
    return Claim(",".join(g.index for g in chosen), fds, [])


def _claim_free(gpus: list[Gpu], want: int, run_id: str, fds: list[int]) -> list[Gpu]:
    chosen, refused = [], []
    for gpu in gpus:
        if len(chosen) == want:
            break
        if gpu.busy:
            refused.append(f"GPU {gpu.index} is in use by pid {', '.join(gpu.pids) or '?'}")
            continue
        fd, holder = _try_lock(gpu, run_id)
        if fd is None:
            refused.append(f"GPU {gpu.index} is held by {holder}")
            continue
        fds.append(fd)
        chosen.append(gpu)
    if len(chosen) < want:
        wanted = "no free GPU" if want == 1 else f"fewer than {want} free GPUs"
        raise GpuError(f"{wanted} on this host: " + "; ".join(refused), "wait for one, or name a GPU with --force")
    return chosen


def _claim_named(spec: str, by_index: dict[str, Gpu], run_id: str, force: bool, fds: list[int]) -> list[Gpu]:
    chosen = []
    for index in [part.strip() for part in spec.split(",") if part.strip()]:
        gpu = by_index.get(index)
        if gpu is None:
            raise GpuError(f"there is no GPU {index} on this host", f"it has: {', '.join(by_index) or 'none'}")
        fd, holder = _try_lock(gpu, run_id)
        if fd is None and not force:
            raise GpuError(f"GPU {index} is held by {holder}", "pick another (--gpus auto) or share it with --force")
        if gpu.busy and not force:
            if fd is not None:
                os.close(fd)
            pids = ", ".join(gpu.pids) or "an unknown process"
            raise GpuError(f"GPU {index} is in use by pid {pids}", "pick another (--gpus auto) or use it with --force")
        if fd is not None:
            fds.append(fd)
        chosen.append(gpu)
    return chosen


def _try_lock(gpu: Gpu, run_id: str) -> tuple[int | None, str]:
    """(fd, "") when locked for us; (None, who holds it) otherwise."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(LOCK_DIR, 0o1777)
    except PermissionError:  # made by another user: already shared
        pass
    path = LOCK_DIR / f"gpu-{gpu.uuid}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.fchmod(fd, 0o666)
    except PermissionError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, _holder(path)
    os.ftruncate(fd, 0)
    info = {"run_id": run_id, "user": getpass.getuser(), "pid": os.getpid(), "since": time.time()}
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd, ""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another job"
    return f"run {info.get('run_id', '?')} of user {info.get('user', '?')}"
