"""The data path: time from `python -m trainer run` to the first optimizer step, against plain TRL on the same rows.

    .venv/bin/python bench/data_path.py                  100000 HR-style tool-calling rows
    .venv/bin/python bench/data_path.py --rows 20000 --kind chat

Both sides are a real subprocess on builtin:tiny (CPU, LoRA, batch 8, one step), timed from the moment it is
started to the end of its first optimizer step:
  gpurun   `python -m trainer run RUN_DIR` on a host layout made here: reads and checks every row, tokenizes
           it once for the token checks, and trains on those very tokens (cold: no cache; warm: a second run,
           which finds the tokenized data in <workdir>/cache/tokenized/).
  TRL      a plain script: datasets.load_dataset("json"), SFTTrainer(assistant_only_loss=True) with the same
           tokenizer, model, LoRA and max_length, which tokenizes, builds labels and truncates in its own maps
           (cold: an empty HF datasets cache; warm: the same script again, with datasets' own cache of those maps).
The ratio gpurun / TRL is printed for both (goal: <= 1.0). Nothing here asserts: read the numbers.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FUNCTIONS = {
    "get_leave_balance": {"leave_type": ["annual", "sick", "personal"]},
    "request_leave": {"leave_type": ["annual", "sick"], "start_date": ["2026-12-01", "2027-01-05"]},
    "query_salary": {"month": ["2026-09", "2026-10", "2026-11"]},
    "get_payslip": {"month": ["2026-10", "2026-11"]},
    "update_address": {"address": ["12 Elm St", "深圳市科苑路17号", "3 Rue de la Paix"]},
    "get_manager": {},
}
REQUESTS = ["Please handle this for me", "我想问一下", "Can you check", "Quick question", "帮我查一下"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"HR function {name}",
            "parameters": {"type": "object", "properties": {arg: {"type": "string"} for arg in args}},
        },
    }
    for name, args in FUNCTIONS.items()
]
SYSTEM = "You are an HR assistant. Route the employee's request to exactly one function call."
MAX_LENGTH = 1024
TRL_SCRIPT = """
import json, sys, time
from pathlib import Path
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

data, model_dir, out, marker = sys.argv[1:5]

class FirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            Path(marker).write_text(json.dumps({"t": time.time()}))

tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
dataset = load_dataset("json", data_files=data, split="train")
args = SFTConfig(
    output_dir=out, max_steps=1, per_device_train_batch_size=8, learning_rate=2e-4, logging_steps=1,
    max_length=%(max_length)d, assistant_only_loss=True, report_to=[], use_cpu=True, bf16=False,
    gradient_checkpointing=False, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
)
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                     callbacks=[FirstStep()])
trainer.train()
"""


def make_rows(n: int, kind: str, seed: int = 0) -> list[dict]:
    """HR-style tool-calling rows (OpenAI shape: the call's arguments a JSON string), or plain two-turn chat."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = rng.choice(sorted(FUNCTIONS))
        arguments = {arg: rng.choice(values) for arg, values in FUNCTIONS[name].items()}
        request = f"{rng.choice(REQUESTS)} #{i}: {name.replace('_', ' ')} {' '.join(arguments.values())}".strip()
        if kind == "chat":
            answer = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": request},
                {"role": "assistant", "content": answer},
            ]
            rows.append({"messages": messages})
            continue
        call = {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": request},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ]
        rows.append({"messages": messages, "tools": TOOLS})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def gpurun_first_step(workdir: Path, run_id: str, env: dict) -> tuple[float, str]:
    """Seconds from starting `python -m trainer run` to its first optimizer step (the step-1 log event)."""
    from trainer.task.loading import config_from_dict, config_to_dict

    raw = {
        "base_model": "builtin:tiny",
        "data": {"train": ["data/train.jsonl"]},
        "training": {
            "max_steps": 1,
            "per_device_train_batch_size": 8,
            "logging_steps": 1,
            "max_length": MAX_LENGTH,
            "eval_strategy": "no",
            "save_strategy": "no",
        },
        "samples": 0,
    }
    run_dir = workdir / "runs" / run_id
    (run_dir / "output").mkdir(parents=True)
    record = {"run_id": run_id, "task": "bench", "config": config_to_dict(config_from_dict(raw))}
    (run_dir / "run.json").write_text(json.dumps(record))
    start = time.time()
    with (run_dir / "train.log").open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "trainer", "run", str(run_dir)], cwd=REPO, env=env, stdout=log, stderr=log
        )
    text = (run_dir / "train.log").read_text()
    if proc.returncode != 0:
        raise SystemExit(f"gpurun run failed ({proc.returncode}):\n{text[-3000:]}")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    first = next(e for e in events if e["kind"] == "log" and e.get("step") == 1)
    said = [line for line in text.splitlines() if line.startswith(("tokenized data:", "tokens per example"))]
    return first["t"] - start, "; ".join(said)


def trl_first_step(data: Path, model_dir: Path, base: Path, name: str, env: dict) -> float:
    script = base / "trl_sft.py"
    script.write_text(TRL_SCRIPT % {"max_length": MAX_LENGTH})
    marker = base / f"{name}.first-step.json"
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(script), str(data), str(model_dir), str(base / name), str(marker)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not marker.exists():
        raise SystemExit(f"plain TRL failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(marker.read_text())["t"] - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--kind", choices=("tools", "chat"), default="tools")
    options = parser.parse_args(argv)

    from trainer.builtin.tiny import ensure_tiny

    base = Path(tempfile.mkdtemp(prefix="gpurun-bench-data-"))
    env = {**os.environ, "GPURUN_CACHE": str(base / "models"), "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "1"}
    os.environ["GPURUN_CACHE"] = env["GPURUN_CACHE"]
    model_dir = ensure_tiny()  # built once, outside both timings
    workdir = base / "host"
    data = workdir / "tasks" / "bench" / "data" / "train.jsonl"
    write_jsonl(data, make_rows(options.rows, options.kind))
    print(
        f"{options.rows} {options.kind} rows ({data.stat().st_size / 1e6:.1f} MB), builtin:tiny, max_length "
        f"{MAX_LENGTH}, {os.cpu_count()} CPUs; seconds from process start to the first optimizer step:",
        flush=True,
    )

    trl_env = {**env, "HF_DATASETS_CACHE": str(base / "hf-datasets")}  # empty: TRL's maps start cold
    results = {}
    results["trl cold"] = trl_first_step(data, model_dir, base, "trl-cold", trl_env)
    print(f"  plain TRL, cold          {results['trl cold']:8.1f} s", flush=True)
    results["gpurun cold"], said = gpurun_first_step(workdir, "cold", env)
    print(f"  gpurun, cold             {results['gpurun cold']:8.1f} s   ({said})", flush=True)
    results["trl warm"] = trl_first_step(data, model_dir, base, "trl-warm", trl_env)
    print(f"  plain TRL, warm          {results['trl warm']:8.1f} s   (datasets' own cache of its maps)", flush=True)
    results["gpurun warm"], said = gpurun_first_step(workdir, "warm", env)
    print(f"  gpurun, warm             {results['gpurun warm']:8.1f} s   ({said})", flush=True)
    cold = results["gpurun cold"] / results["trl cold"]
    warm = results["gpurun warm"] / results["trl warm"]
    print(f"ratio gpurun / TRL: cold {cold:.2f}, warm {warm:.2f} (goal <= 1.0)", flush=True)
    print(json.dumps({"rows": options.rows, "kind": options.kind, **results, "ratio_cold": cold, "ratio_warm": warm}))
    shutil.rmtree(base, ignore_errors=True)  # 100k rows leave about a gigabyte of data, caches and outputs
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
