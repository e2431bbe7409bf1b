"""Every `python -m trainer CMD` the laptop sends a host: how it is built, and how its reply is read.

The host half answers in JSON lines (one object a line; anything else on stdout is noise to skip).
Each command below is one round trip; its reply is parsed here, once, and a host's own refusal
(`{"error", "hint"}`) becomes a GpurunError here too.
"""

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.errors import GpurunError
from launcher.remote import Remote
from trainer.pushed import trainer_argv


def trainer_command(remote: Remote, trainer_root: str, *args: str) -> list[str]:
    """`python -m trainer ARGS` on the host, running the trainer copy under `trainer_root` whatever else
    is on the host's sys.path (see trainer/pushed.py); a relative root is taken from the login's home."""
    # The host's `env:` applies to these commands too (a PATH with its nvidia-smi, say); secrets never do.
    assignments = [f"{k}={v}" for k, v in remote.host.env.items()]
    return ["env", *assignments, *trainer_argv(remote.host_python(), *args, root=trainer_root)]


def run_dir(remote: Remote, run_id: str) -> str:
    return remote.path("runs", run_id)


def json_object(line: str) -> dict | None:
    """One line of a host's reply as a JSON object; None for any other line."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Reply:
    """A finished host command: its JSON objects in order, all its non-empty stdout lines, exit code, stderr."""

    items: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    code: int = 0
    stderr: str = ""

    @property
    def last(self) -> dict | None:
        return self.items[-1] if self.items else None

    def about_runs(self) -> list[dict]:
        return [item for item in self.items if "run_id" in item]

    def failure(self) -> str:
        """Why no reply came: `exit 1: <the last line it wrote>`."""
        tail = (self.stderr or "\n".join(self.lines)).strip().splitlines()[-1:]
        return f"exit {self.code}" + (f": {tail[0]}" if tail else "")


def read_reply(proc: subprocess.CompletedProcess) -> Reply:
    reply = Reply(code=proc.returncode, stderr=proc.stderr or "")
    for line in (proc.stdout or "").splitlines():
        item = json_object(line)
        if item is not None:
            reply.items.append(item)
        if line.strip():
            reply.lines.append(line)
    return reply


def call(remote: Remote, trainer_root: str, *args: str, input: str | None = None, check: bool = True) -> Reply:
    """One round trip: run `python -m trainer ARGS` on the host and read its reply. With `check`, a non-zero
    exit is an error (the remote's own); an ssh failure always is."""
    return read_reply(remote.run(trainer_command(remote, trainer_root, *args), input=input, check=check))


def host_error(host_name: str, reply: dict) -> GpurunError:
    """A host-side command's {"error", "hint"} reply. The host does not know its own name in hosts.yaml:
    its hints say `--host HOST` where the name belongs."""
    hint = reply.get("hint", "").replace("--host HOST", f"--host {host_name}")
    return GpurunError(f"on {host_name}: {reply['error']}", hint)


# ---------------------------------------------------------------- a run's state


def fetch_states(remote: Remote, trainer_root: str, run_ids: list[str]) -> dict[str, dict]:
    """One round trip: the state of several runs on one host."""
    if not run_ids:
        return {}
    reply = call(remote, trainer_root, "state", *(run_dir(remote, r) for r in run_ids))
    return {item["run_id"]: item for item in reply.about_runs()}


def fetch_summaries(remote: Remote, trainer_root: str, run_ids: list[str]) -> dict[str, dict]:
    """One round trip: what `compare` shows of several runs on one host (trainer/host/summary.py)."""
    if not run_ids:
        return {}
    reply = call(remote, trainer_root, "summary", *(run_dir(remote, r) for r in run_ids))
    return {item["run_id"]: item for item in reply.about_runs()}


def settle_states(remote: Remote, trainer_root: str, run_ids: list[str]) -> dict[str, dict]:
    """The state of runs whose start never answered: running (or ended) if it began, else `not_started`,
    and then the host makes sure it never begins (see trainer/host/query.py)."""
    if not run_ids:
        return {}
    reply = call(remote, trainer_root, "settle", *(run_dir(remote, r) for r in run_ids))
    return {item["run_id"]: item for item in reply.about_runs()}


def fetch_resume_info(remote: Remote, trainer_root: str, run_id: str) -> dict:
    """The parent of a resume, as its host has it: run.json, state, latest complete checkpoint."""
    replies = call(remote, trainer_root, "resume-info", run_dir(remote, run_id)).about_runs()
    return replies[-1] if replies else {"state": "not_found", "run_id": run_id}


# ---------------------------------------------------------------- start, stop, merge


def start_run(remote: Remote, trainer_root: str, run_id: str, payload: dict) -> tuple[dict | None, str]:
    """The host's JSON reply, or (None, what went wrong) when none came back: a connection that dropped
    mid-call leaves it open whether the run began."""
    reply = call(remote, trainer_root, "start", run_dir(remote, run_id), input=json.dumps(payload), check=False)
    return (reply.last, "") if reply.last is not None else (None, reply.failure())


def stop_run(remote: Remote, trainer_root: str, run_id: str, grace: float, check: bool = True) -> dict:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the trainer has saved and exited: the run's
    state then. Without `check`, a host that does not answer gives {"state": "unknown", "error": ...}."""
    reply = call(remote, trainer_root, "stop", run_dir(remote, run_id), str(grace), check=check)
    if reply.last is not None:
        return reply.last
    if check:
        raise GpurunError(f"no answer from {remote.host.name} while stopping {run_id} ({reply.failure()})")
    return {"state": "unknown", "error": reply.stderr.strip()[-200:]}


def merge_run(remote: Remote, trainer_root: str, run_id: str) -> str:
    """Fold a run's adapter into its base model on the host; returns the host's last line."""
    reply = call(remote, trainer_root, "merge", run_dir(remote, run_id), check=False)
    if reply.code != 0:
        message = next((line[7:] for line in reply.lines if line.startswith("error: ")), None)
        tail = (reply.stderr.strip().splitlines() or ["no output"])[-1]
        raise GpurunError(f"merge of {run_id} failed: {message or tail}", "check the run: gpurun status")
    return reply.lines[-1] if reply.lines else "merged"


def infer_run(remote: Remote, trainer_root: str, request: dict) -> list[dict]:
    """The adapter's replies (trainer/training/infer.py), one per prompt, in order."""
    reply = call(remote, trainer_root, "infer", input=json.dumps(request), check=False)
    return infer_answers(reply, len(request["prompts"]), f"on {remote.host.name}", "check the run: gpurun status")


def infer_answers(reply: Reply, prompts: int, where: str, hint: str) -> list[dict]:
    """`infer`'s answers from its reply (the host's, or the laptop's own with --local), or its one error."""
    answers = [item for item in reply.items if "reply" in item]
    if reply.code != 0 or len(answers) != prompts:
        said = next((item for item in reply.items if "error" in item), None)
        if said is not None:
            raise GpurunError(f"{where}: {said['error']}", said.get("hint", ""))
        raise GpurunError(f"infer failed {where} ({reply.failure()})", hint)
    return answers


def export_run(remote: Remote, trainer_root: str, run_id: str, kind: str) -> dict:
    """Merge and write a GGUF file on the host, verified there (trainer/training/gguf_export.py): its reply."""
    reply = call(remote, trainer_root, "export", run_dir(remote, run_id), kind, check=False)
    said = reply.last
    if said is None:
        raise GpurunError(f"export of {run_id} failed on {remote.host.name} ({reply.failure()})", "gpurun status")
    if "error" in said:
        raise GpurunError(f"export of {run_id}: {said['error']}", said.get("hint", ""))
    return said


# ---------------------------------------------------------------- streams


def follow_argv(remote: Remote, trainer_root: str, run_id: str, log_offset: int, events_offset: int) -> list[str]:
    """The host's `follow`: train.log lines and events from these byte offsets, then the end, as JSON lines."""
    return trainer_command(remote, trainer_root, "follow", run_dir(remote, run_id), str(log_offset), str(events_offset))


def read_log(remote: Remote, trainer_root: str, run_id: str, on_log: Callable[[str], None]) -> dict:
    """The whole train.log as it is now, and the run's state; no waiting."""
    reply = call(remote, trainer_root, "follow", run_dir(remote, run_id), "0", str(1 << 62), "once")
    state: dict = {}
    for message in reply.items:
        if "log" in message:
            on_log(message["log"])
        elif "end" in message:
            state = message["end"]
    return state


def stream_setup(remote: Remote, trainer_root: str, args: list[str], on_item, on_other) -> tuple[dict | None, int, str]:
    """The host's `setup`, read as it goes: each JSON object to `on_item` (the last one that is not
    progress is the reply), every other line to `on_other`. Returns (reply, exit code, stderr).
    Ctrl-C closes the connection, which stops the host's pip."""
    proc = remote.stream(trainer_command(remote, trainer_root, "setup", *args))
    reply: dict | None = None
    try:
        for line in proc.stdout:
            item = json_object(line)
            if item is None:
                on_other(line.rstrip())
            elif on_item(item):
                reply = item
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    stderr = proc.stderr.read() if proc.stderr else ""
    return reply, proc.wait(), stderr
