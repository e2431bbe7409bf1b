"""gpurun against plain TRL on a host with NVIDIA GPUs: tokens/s, peak memory and loss, side by side.

    python bench/gpu.py                                   (on the GPU host, after `bash scripts/setup.sh`
    python bench/gpu.py --model Qwen/Qwen2.5-0.5B-Instruct --steps 60      with a CUDA torch, see README)

Runs the same public model on the same generated chat rows with the same LoRA settings, once with plain TRL
(an SFTTrainer script started by torchrun, the way TRL's docs run it) and once with gpurun (`gpurun train` on the
`local` host, then `gpurun logs -f`), on one GPU and on all GPUs (DDP, and FSDP where gpurun's `distributed`
section offers it). Tokens/s is samples/s times the rows' mean token count (the same rows on both sides); peak
memory is torch's max_memory_allocated of rank 0. Nothing here asserts: read the numbers. Without a GPU it says
so and exits 2 (no model is downloaded first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXIT_NO_GPU = 2

# Plain TRL, as its SFT docs write it: written to a file and started with torchrun --nproc-per-node N.
PLAIN_TRL = """
import json, os, sys, torch
from datasets import load_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

opts = json.loads(sys.argv[1])
rows = load_dataset("json", data_files=opts["data"], split="train")
# FSDP2, full shard, each decoder layer wrapped: what transformers 5 documents (the string form is deprecated)
fsdp_config = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True}
fsdp = {"fsdp": True, "fsdp_config": fsdp_config} if opts["strategy"] == "fsdp" else {}
config = SFTConfig(
    output_dir=opts["out"], max_steps=opts["steps"], per_device_train_batch_size=opts["batch"],
    learning_rate=2e-4, bf16=True, logging_steps=10, save_strategy="no", report_to=[],
    max_length=opts["max_length"], assistant_only_loss=True, model_init_kwargs={"dtype": torch.bfloat16}, **fsdp,
)
lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=opts["model"], args=config, train_dataset=rows, peft_config=lora)
result = trainer.train()
if int(os.environ.get("RANK", "0")) == 0:
    print("BENCH " + json.dumps({
        "samples_per_second": result.metrics["train_samples_per_second"],
        "loss": result.training_loss,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
    }))
"""


def nvidia_smi_gpus() -> list[str] | None:
    """The GPUs nvidia-smi lists, or None when there is no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("GPU ")] if out.returncode == 0 else []


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the benchmark, or None when it can. Checks nvidia-smi before torch."""
    listed = nvidia_smi_gpus()
    if listed is None:
        return "no NVIDIA GPU here: nvidia-smi is not installed"
    if not listed:
        return "no NVIDIA GPU here: nvidia-smi lists none"
    import torch

    if not torch.cuda.is_available():
        return (
            f"nvidia-smi lists {len(listed)} GPU(s) but this Python's torch {torch.__version__} sees none "
            "(a CPU build?): install a CUDA build, e.g. `gpurun setup` picks one for the driver"
        )
    return None


def chat_rows(count: int) -> list[dict]:
    """HR-routing chat rows, the demo's kind, varied enough that every batch differs."""
    months = [f"2026-{m:02d}" for m in range(1, 13)]
    rows = []
    for i in range(count):
        month = months[i % 12]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Route the employee's request to one HR function."},
                    {"role": "user", "content": f"How much was I paid in {month}? (request {i})"},
                    {
                        "role": "assistant",
                        "content": json.dumps({"name": "query_salary", "arguments": {"month": month}}),
                    },
                ]
            }
        )
    return rows


def mean_tokens(model: str, rows: list[dict], max_length: int) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    lengths = [min(len(tokenizer.apply_chat_template(r["messages"], tokenize=True)), max_length) for r in rows]
    return sum(lengths) / len(lengths)


def run_plain_trl(opts: dict, processes: int, work: Path) -> dict:
    script = work / "plain_trl.py"
    script.write_text(PLAIN_TRL)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    out = subprocess.run([*argv, str(script), json.dumps(opts)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[len("BENCH ") :])
    return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]}


def run_gpurun(opts: dict, processes: int, work: Path) -> dict:
    """`gpurun train` on the local host of a throwaway project, then `logs -f`; numbers from the run's events."""
    project = work / f"gpurun-{processes}-{opts['strategy']}"
    task = project / "tasks" / "bench"
    task.mkdir(parents=True)
    shutil.copy(opts["data"], task / "train.jsonl")
    config = {
        "base_model": opts["model"],
        "task": "sft",
        "data": {"train": ["train.jsonl"]},
        "lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]},
        "training": {
            "max_steps": opts["steps"],
            "per_device_train_batch_size": opts["batch"],
            "learning_rate": 2e-4,
            "max_length": opts["max_length"],
            "logging_steps": 10,
            "save_strategy": "no",
            "bf16": True,
        },
    }
    if opts["strategy"] != "ddp":
        config["distributed"] = {"strategy": opts["strategy"]}
    (task / "task.yaml").write_text(json.dumps(config))  # JSON is YAML
    hosts = {"default": "local", "hosts": {"local": {"transport": "local", "workdir": str(work / "host")}}}
    (project / "hosts.yaml").write_text(json.dumps(hosts))
    gpurun = [sys.executable, "-m", "launcher.cli"]
    for args in (["train", "tasks/bench", "--gpus", str(processes)], ["logs", "-f"]):
        out = subprocess.run([*gpurun, *args], cwd=project, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    events_files = sorted((work / "host" / "runs").glob("*/events.jsonl"), key=lambda p: p.stat().st_mtime)
    events = [json.loads(line) for line in events_files[-1].read_text().splitlines() if line.strip()]
    summary = next((e for e in reversed(events) if e.get("kind") == "summary"), {})
    peak = max((e.get("peak_mem_gb", 0.0) for e in events), default=0.0)
    return {
        "samples_per_second": summary.get("train_samples_per_second"),
        "loss": summary.get("train_loss"),
        "peak_mem_gb": peak or None,
    }


def fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args(argv)
    reason = no_gpu_reason()
    if reason is not None:
        print(f"bench/gpu.py: {reason}. Nothing was run; run it on a host with NVIDIA GPUs.", file=sys.stderr)
        return EXIT_NO_GPU
    import torch

    count = torch.cuda.device_count()
    work = Path(tempfile.mkdtemp(prefix="gpurun-bench-gpu-"))
    data = work / "train.jsonl"
    rows = chat_rows(args.rows)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens = mean_tokens(args.model, rows[:500], args.max_length)
    setups = [(1, "ddp")] + ([(count, "ddp"), (count, "fsdp")] if count > 1 else [])
    print(f"{args.model}, {args.steps} steps of {args.batch} rows per GPU, {tokens:.0f} tokens per row; {count} GPUs")
    print(f"{'GPUs':>4} {'strategy':8} {'engine':8} {'tokens/s':>10} {'peak GB':>8} {'loss':>8} {'vs TRL':>7}")
    for processes, strategy in setups:
        opts = {**vars(args), "data": str(data), "out": str(work / "trl-out"), "strategy": strategy}
        plain = run_plain_trl(opts, processes, work)
        ours = run_gpurun(opts, processes, work)
        for engine, result in (("TRL", plain), ("gpurun", ours)):
            if "error" in result:
                print(f"{processes:>4} {strategy:8} {engine:8} failed: {' '.join(result['error'])}")
                continue
            speed = result["samples_per_second"] * tokens if result["samples_per_second"] else None
            base = plain.get("samples_per_second")
            ratio = result["samples_per_second"] / base if base and result["samples_per_second"] else None
            loss, peak = fmt(result["loss"], "8.4f"), fmt(result["peak_mem_gb"], "8.2f")
            print(f"{processes:>4} {strategy:8} {engine:8} {fmt(speed, '10.0f')} {peak} {loss} {fmt(ratio, '7.2f')}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
