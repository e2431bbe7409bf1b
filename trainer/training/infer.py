"""`python -m trainer infer` (stdin: a JSON request): ask a trained adapter, with the task's chat template, system
prompt and tools, and print one JSON line per prompt: {"prompt", "reply", "calls"} (the calls parsed as the eval
suite parses them). The launcher's `gpurun infer` sends it to the host the run lives on (the base model is there),
or runs it here on a pulled run with --local.

    {"adapter": DIR, "run_json": FILE, "task_dir": DIR, "prompts": ["..."], "max_new_tokens": 128}

`adapter`: the run's output/ (or, for a run that ended before saving one, its latest complete checkpoint).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer.builtin.tiny import default_cache_dir
from trainer.checkpoints import latest_complete_checkpoint
from trainer.task.loading import config_from_dict
from trainer.task.schema import TaskConfig
from trainer.training.quiet import DEBUG_LOG, route_library_noise


def main(argv: list[str]) -> int:
    request = json.loads(sys.stdin.read())
    adapter = Path(request["adapter"])
    run_json = Path(request["run_json"])
    route_library_noise(run_json.parent / DEBUG_LOG)  # loading bars and warnings beside train.log, not in the reply
    if not (adapter / "adapter_config.json").is_file():
        checkpoint = latest_complete_checkpoint(adapter)
        if checkpoint is None:
            print(
                json.dumps(
                    {
                        "error": f"no adapter in {adapter}, nor a complete checkpoint",
                        "hint": "wait for the run's first save (gpurun logs -f), or train longer",
                    }
                ),
                flush=True,
            )
            return 1
        adapter = checkpoint
    config = config_from_dict(json.loads(run_json.read_text(encoding="utf-8"))["config"])
    model, tokenizer = load(config, adapter, run_json.parent.parent.parent / "cache" / "models")
    tools = task_tools(config, Path(request["task_dir"]))
    from trainer.training.evaluate import generate, parse_tool_calls

    for prompt in request["prompts"]:
        messages = [{"role": "system", "content": config.data.system_prompt}] if config.data.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        reply = generate(model, tokenizer, messages, int(request.get("max_new_tokens") or 128), tools)
        calls = parse_tool_calls(reply)
        said = {"prompt": prompt, "reply": reply, "calls": calls, "adapter": str(adapter)}
        offered = {tool.get("function", tool).get("name") for tool in tools or []}
        said["unknown"] = [c.get("name") for c in calls if offered and c.get("name") not in offered]
        print(json.dumps(said, ensure_ascii=False), flush=True)
    return 0


def load(config: TaskConfig, adapter: Path, fallback_cache: Path):
    """The base model (as the run trained it, quantized or not) with the adapter on it, and the run's tokenizer."""
    from peft import PeftModel

    from trainer.training.model import load_model, load_tokenizer, resolve_base_model

    base = resolve_base_model(config, default_cache_dir(fallback=fallback_cache))
    model = PeftModel.from_pretrained(load_model(config, base), str(adapter))
    model.eval()
    tokenizer_dir = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base)
    return model, load_tokenizer(str(tokenizer_dir))


def task_tools(config: TaskConfig, task_dir: Path) -> list[dict] | None:
    """The functions the task's rows offer (the first training row with tools): what the model learned to call."""
    from trainer.task.splits import load_task_data

    try:
        splits = load_task_data(task_dir, config, load_hub=False)
    except Exception:  # noqa: BLE001 - the task changed since: ask without tools rather than fail
        return None
    for row in splits["train"]:
        if row.get("tools"):
            return row["tools"]
    return None
