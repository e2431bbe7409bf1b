"""`gpurun infer RUN PROMPT`: ask a run's adapter, on the host it lives on (its base model is there), or here on
the pulled run with --local (the training stack and the base model at hand). The generating is the trainer's
(trainer/training/infer.py), the same code either way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from launcher.errors import GpurunError
from launcher.hostcalls import infer_answers, infer_run, read_reply
from launcher.runs import OpenRun
from launcher.sync import push_trainer

MAX_PROMPTS = 200


def read_prompts(prompt: str | None, file: str | None) -> list[str]:
    """One prompt, or a .jsonl/.txt file of them (a row's "prompt" or its last user turn; a line of text)."""
    if prompt and file:
        raise GpurunError("give a prompt or --file, not both", 'gpurun infer RUN "question"  or  --file prompts.jsonl')
    if prompt:
        return [prompt]
    if not file:
        raise GpurunError("nothing to ask", 'gpurun infer RUN "question"  or  gpurun infer RUN --file prompts.jsonl')
    path = Path(file)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise GpurunError(f"cannot read {file}: {exc}", "give a .jsonl or .txt file of prompts") from None
    prompts = [_prompt_of(line, path.name, number) for number, line in enumerate(lines, 1)]
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise GpurunError(f"{file}: {len(prompts)} prompts", f"give 1 to {MAX_PROMPTS}")
    return prompts


def _prompt_of(line: str, name: str, number: int) -> str:
    if not name.endswith(".jsonl"):
        return line
    try:
        row = json.loads(line)
    except ValueError:
        raise GpurunError(f"{name}:{number}: not JSON", 'each line: {"prompt": "..."} or a chat row') from None
    if not isinstance(row, dict):
        row = {}
    if isinstance(row.get("prompt"), str):
        return row["prompt"]
    turns = row.get("messages") if isinstance(row.get("messages"), list) else []
    users = [m.get("content") for m in turns if isinstance(m, dict) and m.get("role") == "user"]
    if users and isinstance(users[-1], str):
        return users[-1]
    raise GpurunError(f"{name}:{number}: no prompt", 'each line: {"prompt": "..."} or a chat row with a user turn')


def ask(opened: OpenRun, prompts: list[str], max_new_tokens: int, local: bool) -> list[dict]:
    record, remote = opened.record, opened.remote
    if not local:
        run_dir = remote.path("runs", record.run_id)
        request = {
            "adapter": f"{run_dir}/output",
            "run_json": f"{run_dir}/run.json",
            "task_dir": remote.path("tasks", record.task),  # the host's name for the task folder
            "prompts": prompts,
            "max_new_tokens": max_new_tokens,
        }
        return infer_run(remote, push_trainer(remote), request)
    pulled = Path(record.task_dir) / "runs" / record.run_id
    if not (pulled / "run.json").is_file():
        raise GpurunError(f"{record.run_id} has not been pulled here", f"gpurun pull {record.run_id}, then --local")
    request = {
        "adapter": str(pulled),
        "run_json": str(pulled / "run.json"),
        "task_dir": record.task_dir,
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
    }
    from trainer.pushed import trainer_argv

    argv = trainer_argv(sys.executable, "infer")
    reply = read_reply(subprocess.run(argv, input=json.dumps(request), capture_output=True, text=True))
    hint = "is the training stack installed here? (pip install 'gpurun[train]')"
    return infer_answers(reply, len(prompts), "here", hint)
