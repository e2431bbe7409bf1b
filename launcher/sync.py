"""rsync between laptop and host: the argv built by one pure function, push and pull on top.

Layout on the host (under workdir): tasks/<task>/ mirrors the local task dir (so `--delete`
there can never reach runs/), trainer/<version>/trainer/ is this launcher's trainer package.
"""

import hashlib
import json
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trainer
from launcher import __version__
from launcher.errors import GpurunError
from launcher.hosts import Host
from launcher.remote import Remote, ssh_failure
from trainer.rundir import LOG_FILES

IGNORE_FILES = (".gitignore", ".gpurunignore")
ALWAYS_EXCLUDED = ("/runs/", ".git/", "__pycache__/", ".ipynb_checkpoints/")
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%")


def rsync_argv(
    src: str,
    dst: str,
    rsh: list[str] | None = None,
    delete: bool = False,
    excludes: tuple[str, ...] = (),
    ignore_files: tuple[str, ...] = (),
    progress: bool = False,
    partial: bool = True,
    follow_links: bool = False,
    files_from: str | None = None,
) -> list[str]:
    argv = [
        "rsync",
        "--recursive",
        # copy symlinks as symlinks, never follow them out of the tree; except for the data files task.yaml
        # names (follow_links, with files_from listing them): the host needs their content, not a dangling link
        "--copy-links" if follow_links else "--links",
        "--times",  # keep mtimes: the next sync compares by size+mtime and skips unchanged files
        "--perms",
        "--compress",
        "--mkpath",  # create the destination's parents (rsync >= 3.2.3)
    ]
    if rsh is not None:
        argv += ["--rsh", shlex.join(rsh)]  # the same ssh options as the command channel
    if partial:
        argv += ["--partial"]  # keep a half-sent file so a retry resumes it
    if progress:
        argv += ["--info=progress2", "--no-inc-recursive"]  # one overall percentage line
    for name in ignore_files:
        argv += [f"--filter=:- {name}"]  # per-directory ignore files, gitignore-style
    for pattern in excludes:
        argv += [f"--exclude={pattern}"]
    if files_from is not None:
        argv += [f"--files-from={files_from}"]  # exactly these paths (relative to src), their folders implied
    if delete:
        argv += ["--delete"]  # only ever used on the task mirror, never on a run directory
    argv += [src, dst]
    return argv


def run_rsync(argv: list[str], what: str, on_progress=None, host: Host | None = None) -> None:
    errors = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: rsync can never block on a full stderr
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, text=True)
    except FileNotFoundError:
        raise GpurunError("rsync not found", "install it (apt-get install rsync / brew install rsync)") from None
    buffer = ""
    while True:
        chunk = proc.stdout.read(256)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = re.split(r"[\r\n]", buffer)
        for line in lines:
            match = _PROGRESS.match(line)
            if match and on_progress:
                on_progress(int(match.group(2)), int(match.group(1).replace(",", "")))
    proc.wait()
    errors.seek(0)
    stderr = errors.read()
    errors.close()
    if proc.returncode != 0:
        if host is not None and not host.is_local and (proc.returncode == 255 or _ssh_said_no(stderr)):
            raise ssh_failure(host, stderr)  # the same message as the command channel's
        last = (stderr.strip().splitlines() or ["rsync failed"])[-1]
        raise GpurunError(f"{what} failed (rsync exit {proc.returncode}): {last}", _rsync_hint(stderr))


def _ssh_said_no(stderr: str) -> bool:
    return any(s in stderr for s in ("Host key verification failed", "host key is known", "Permission denied ("))


def _rsync_hint(stderr: str) -> str:
    if "command not found" in stderr or "rsync: not found" in stderr:
        return "install rsync on the host"
    return "check the host with `gpurun status` and try again"


# ---------------------------------------------------------------- push


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def task_name_of(task_dir: Path) -> str:
    """The task's name on the host (and in run ids): the folder's name where it is safe in a path and a
    shell word; otherwise a safe spelling of it plus a short hash of the real name, so "hr data" and
    "hr-data" never share a mirror. The local folder keeps its name: results are pulled into it."""
    name = task_dir.resolve().name
    if _SAFE_NAME.fullmatch(name):
        return name
    spelled = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:40] or "task"
    return f"{spelled}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


@dataclass
class PushPlan:
    """What a push will send, and what the ignore rules keep back: shown before anything moves."""

    files: int
    size: int
    largest: list[tuple[str, int]]
    excluded_large: list[tuple[str, int]]
    held: tuple = ((), ())  # held_back's (files to send as content, mirror excludes): the push reuses it


LARGE_EXCLUDED = 1 << 20  # excluded files from this size up are worth a mention


def mirrored_names(task_dir: Path) -> set[str]:
    """The files the mirror's own filters let through (an rsync dry run on this machine)."""
    with tempfile.TemporaryDirectory() as scratch:
        argv = rsync_argv(f"{task_dir}/", f"{scratch}/x/", excludes=ALWAYS_EXCLUDED, ignore_files=IGNORE_FILES)
        argv[1:1] = ["--dry-run", "--out-format=%n"]
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GpurunError(f"cannot list {task_dir}: {proc.stderr.strip()[-200:]}", "check the folder's permissions")
    return {line for line in proc.stdout.splitlines() if line and not line.endswith("/")}


def held_back(task_dir: Path, data_files, mirrored: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Data files task.yaml names that the plain mirror would not carry as content, and what to keep out of
    the mirror for them: (files to send as content, mirror excludes). A file is held back when the ignore
    rules exclude it (data is often gitignored for its size) or when it, or a folder on its way, is a symlink
    (the mirror copies links as links: the host would get a dangling one). Validate refuses paths outside."""
    task_dir = Path(task_dir).resolve()
    send: list[str] = []
    excludes: set[str] = set()
    for name in data_files:
        rel = os.path.normpath(name)
        if os.path.isabs(rel) or rel.split(os.sep)[0] == ".." or not (task_dir / rel).is_file():
            continue
        parts = Path(rel).parts
        linked = next((i for i in range(1, len(parts) + 1) if task_dir.joinpath(*parts[:i]).is_symlink()), None)
        if linked is not None:
            # kept out of the mirror, so it never sends the link over the content (or --delete the content)
            excludes.add("/" + _literal("/".join(parts[:linked])))
        else:
            mirrored = mirrored_names(task_dir) if mirrored is None else mirrored
            if rel in mirrored:
                continue
            # an ignored file is not touched by the mirror's --delete (rsync protects excluded files)
        send.append(rel)
    return sorted(send), sorted(excludes)


def _literal(path: str) -> str:
    """A path as an rsync filter pattern that matches only itself (wildcard characters escaped)."""
    return re.sub(r"([\\*?\[])", r"\\\1", path)


def plan_push(task_dir: Path, data_files=()) -> PushPlan:
    """The files the push will send (an rsync dry run of its own filters, plus the named data files it
    sends as content), with sizes."""
    task_dir = task_dir.resolve()
    included = mirrored_names(task_dir)
    send, excludes = held_back(task_dir, data_files, included)
    included |= set(send)
    sizes = {}
    for path in task_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            sizes[str(path.relative_to(task_dir))] = path.stat().st_size
    for name in send:
        sizes[name] = (task_dir / name).stat().st_size  # a symlink's content
    sent = {name: sizes.get(name, 0) for name in included}
    excluded = {
        name: size
        for name, size in sizes.items()
        if name not in included and size >= LARGE_EXCLUDED and not name.startswith("runs/")
    }
    by_size = sorted(sent.items(), key=lambda item: -item[1])
    excluded_large = sorted(excluded.items(), key=lambda i: -i[1])[:5]
    return PushPlan(len(sent), sum(sent.values()), by_size[:3], excluded_large, (send, excludes))


def push_task(remote: Remote, task_dir: Path, on_progress=None, data_files=(), held: tuple | None = None) -> str:
    """Mirror the task dir to <workdir>/tasks/<task>/; returns the host path.

    The data files task.yaml names always arrive as content (held_back): what validate read is what the
    host trains on. They go in a second transfer only when the mirror would not carry them. `held`: held_back's
    answer as a plan (plan_push) just worked it out, so that the push does not list the folder again."""
    name = task_name_of(task_dir)
    dest = remote.path("tasks", name)
    send, held_excludes = held if held is not None else held_back(task_dir, data_files)
    argv = rsync_argv(
        f"{task_dir.resolve()}/",
        remote.rsync_path(dest + "/"),
        rsh=remote.rsh_argv(),
        delete=True,
        excludes=(*held_excludes, *ALWAYS_EXCLUDED),
        ignore_files=IGNORE_FILES,
        progress=on_progress is not None,
    )
    argv = _excludes_first(argv, held_excludes)
    run_rsync(argv, f"push of {task_dir}", on_progress, remote.host)
    if send:
        with tempfile.NamedTemporaryFile("w", suffix=".files") as listing:
            listing.write("\n".join(send) + "\n")
            listing.flush()
            argv = rsync_argv(
                f"{task_dir.resolve()}/",
                remote.rsync_path(dest + "/"),
                rsh=remote.rsh_argv(),
                follow_links=True,
                files_from=listing.name,
            )
            run_rsync(argv, f"push of {task_dir}'s data files", host=remote.host)
    return dest


def _excludes_first(argv: list[str], patterns) -> list[str]:
    """Move these --exclude rules before the ignore files' rules: rsync's first matching rule wins, and a
    .gitignore `!data/train.jsonl` must not bring a held-back file back into the mirror."""
    rules = [f"--exclude={p}" for p in patterns]
    rest = [a for a in argv if a not in rules]
    first_filter = next((i for i, a in enumerate(rest) if a.startswith("--filter=")), len(rest) - 2)
    return rest[:first_filter] + rules + rest[first_filter:]


def trainer_version() -> str:
    """Launcher version + a hash of the trainer's sources, subfolders included: the host runs exactly this code."""
    digest = hashlib.sha256()
    source = trainer_source_dir()
    for path in sorted(source.rglob("*.py")):
        digest.update(path.relative_to(source).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}-{digest.hexdigest()[:12]}"


def trainer_source_dir() -> Path:
    return Path(trainer.__file__).resolve().parent


def push_trainer(remote: Remote) -> str:
    """Copy this launcher's trainer package to <workdir>/trainer/<version>/; returns that root."""
    root = remote.path("trainer", trainer_version())
    argv = rsync_argv(
        f"{trainer_source_dir()}/",
        remote.rsync_path(root + "/trainer/"),
        rsh=remote.rsh_argv(),
        excludes=("__pycache__/",),
    )
    run_rsync(argv, "push of the trainer", host=remote.host)
    return root


# ---------------------------------------------------------------- pull


MANIFEST = ".gpurun-pulled.json"  # what pull wrote last time: a local file that no longer matches is the user's


EXPORTS = ("merged", "gguf")  # output/ folders that `merge` and `export` write: big, each pulled only when asked


def pull_argv(
    remote: Remote, run_id: str, dest: Path, checkpoints: bool, progress: bool, extras: tuple[str, ...] = ()
) -> list[str]:
    run_dir = remote.path("runs", run_id)
    sources = [remote.rsync_path(run_dir + "/output/")]
    sources += [remote.rsync_path(f"{run_dir}/{name}") for name in LOG_FILES]
    argv = rsync_argv(
        sources[0],
        f"{dest}/",
        rsh=remote.rsh_argv(),
        excludes=(() if checkpoints else ("checkpoint-*/",)) + tuple(f"/{x}/" for x in EXPORTS if x not in extras),
        progress=progress,
    )
    argv[-2:-1] = sources  # output/'s contents and the logs, into one folder, in one transfer
    argv.insert(1, "--ignore-missing-args")  # a run that died early has no events.jsonl yet
    return argv


def pull_run(
    remote: Remote,
    run_id: str,
    dest: Path,
    checkpoints: bool = False,
    on_progress=None,
    force: bool = False,
    extras: tuple[str, ...] = (),
) -> None:
    """Bring a run's output/ (+ logs) into dest. Never deletes a local file, and never overwrites
    one the user changed since the last pull unless `force`."""
    dest = Path(dest)
    if dest.exists() and not force:
        conflicts = local_conflicts(remote, run_id, dest, checkpoints, extras)
        if conflicts:
            shown = ", ".join(conflicts[:5]) + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
            raise GpurunError(
                f"pull would overwrite {len(conflicts)} local file(s) you changed: {shown}",
                "move them elsewhere, or overwrite them with --force",
            )
    run_rsync(
        pull_argv(remote, run_id, dest, checkpoints, on_progress is not None, extras),
        f"pull of {run_id}",
        on_progress,
        remote.host,
    )
    write_manifest(dest)


def local_conflicts(remote: Remote, run_id: str, dest: Path, checkpoints: bool, extras: tuple[str, ...]) -> list[str]:
    """Files the pull would change whose local copy is not what the last pull wrote."""
    argv = pull_argv(remote, run_id, dest, checkpoints, progress=False, extras=extras)
    argv[1:1] = ["--dry-run", "--itemize-changes"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode not in (0, 23, 24):
        return []  # the real transfer will report the problem properly
    manifest = read_manifest(dest)
    conflicts = []
    for line in proc.stdout.splitlines():
        flags, _, name = line.partition(" ")
        if not flags.startswith(">f") or flags.startswith(">f+++"):
            continue  # not a file, or a new one
        local = dest / name
        if local.exists() and manifest.get(name) != _signature(local):
            conflicts.append(name)
    return conflicts


def _signature(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def read_manifest(dest: Path) -> dict:
    try:
        return json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def write_manifest(dest: Path) -> None:
    entries = {str(p.relative_to(dest)): _signature(p) for p in dest.rglob("*") if p.is_file() and p.name != MANIFEST}
    (dest / MANIFEST).write_text(json.dumps(entries))
