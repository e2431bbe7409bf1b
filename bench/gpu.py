"""The table that decides gpurun's defaults on a GPU (issue 15 item 5): plain TRL as its docs run it, TRL as a careful
user tunes it, and gpurun with its defaults, on the same model, rows, LoRA and steps.

    python bench/gpu.py                      (on the GPU host, after `bash scripts/setup.sh` with a CUDA torch)
    python bench/gpu.py --models Qwen/Qwen2.5-0.5B-Instruct --steps 30 --adapters lora
    python bench/gpu.py --dry-run            (anywhere: print the plan and exit 2)

Engines: `trl` (an SFTTrainer script started by torchrun, TRL's defaults), `trl-tuned` (the same with
FlashAttention 2, padding-free batches and Liger's kernels, where installed), `gpurun` (`gpurun train` on the
`local` host, then `gpurun logs -f`). For each model (0.5B and 4B Qwen by default), adapter (LoRA, QLoRA) and
GPU count (one, all): tokens/s and trained tokens/s (samples/s times the rows' mean token and reply-token counts:
the same rows on every side), peak memory (torch's max_memory_allocated, rank 0), gpurun's memory estimate for it
(trainer/training/memory.py), final loss, and MFU (6 x parameters x tokens/s over the GPUs' bf16 peak). Nothing here
asserts: read the numbers. Without a GPU it prints the plan, says why nothing ran, and exits 2 (no download first).
About 10 minutes on one 8-GPU A100/H100 host at the defaults.
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
init = {"dtype": torch.bfloat16}
if opts["adapter"] == "qlora":
    from transformers import BitsAndBytesConfig
    init["quantization_config"] = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
tuned = {}
if opts["engine"] == "trl-tuned":  # what a careful user adds, each only where the host has it
    import importlib.util
    if importlib.util.find_spec("flash_attn"):
        init["attn_implementation"] = "flash_attention_2"
        tuned["padding_free"] = True
    if importlib.util.find_spec("liger_kernel"):
        tuned["use_liger_kernel"] = True
config = SFTConfig(
    output_dir=opts["out"], max_steps=opts["steps"], per_device_train_batch_size=opts["batch"],
    learning_rate=2e-4, bf16=True, logging_steps=10, save_strategy="no", report_to=[],
    max_length=opts["max_length"], assistant_only_loss=True, model_init_kwargs=init, **fsdp, **tuned,
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
    project = work / f"gpurun-{processes}-{opts['strategy']}-{opts.get('adapter', 'lora')}-{Path(opts['model']).name}"
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
        },  # bf16, checkpointing, attention, padding-free and Liger: gpurun's own choices on the host
    }
    if opts.get("adapter") == "qlora":
        config["quantization"] = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "bfloat16"}
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


ENGINES = ("trl", "trl-tuned", "gpurun")
# Dense bf16 peak TFLOP/s by the name nvidia-smi gives (no sparsity): MFU's denominator.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0, "4090": 165.0}


def plan(models: list[str], adapters: list[str], gpus: int) -> list[dict]:
    """Every row of the table, in the order it runs: per model, adapter and GPU count, each engine. `gpus` 0: not
    known here (a dry run without GPUs): the all-GPU rows say "all"."""
    counts: list = [1] + ([gpus] if gpus > 1 else ["all"] if gpus == 0 else [])
    return [
        {"model": m, "adapter": a, "processes": n, "engine": e}
        for m in models
        for a in adapters
        for n in counts
        for e in ENGINES
    ]


def print_plan(cases: list[dict], args) -> None:
    print(f"plan: {len(cases)} runs of {args.steps} steps, {args.batch} rows of up to {args.max_length} tokens per GPU")
    print(f"{'model':32} {'adapter':7} {'GPUs':>4} engine")
    for case in cases:
        print(f"{case['model']:32} {case['adapter']:7} {case['processes']:>4} {case['engine']}")


def peak_tflops(names: list[str]) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if names and key in names[0]:
            return value
    return None


def estimate_gb(model: str, adapter: str, batch: int, tokens: int) -> float | None:
    """gpurun's pre-flight estimate for this row (one process), from the model's config.json."""
    from transformers import AutoConfig

    sys.path.insert(0, str(REPO))
    from trainer.training.memory import ModelShape, Setup, estimate

    shape = ModelShape.from_config(AutoConfig.from_pretrained(model).to_dict())
    setup = Setup(batch=batch, tokens=tokens, dtype_bytes=2, quant_bits=4 if adapter == "qlora" else None, cuda=True)
    return estimate(shape, setup).total / 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen3-4B"])
    parser.add_argument("--adapters", nargs="+", choices=["lora", "qlora"], default=["lora", "qlora"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit 2")
    args = parser.parse_args(argv)
    listed = nvidia_smi_gpus() or []
    reason = "--dry-run" if args.dry_run else no_gpu_reason()
    if reason is not None:
        print_plan(plan(args.models, args.adapters, len(listed)), args)
        why = "a dry run" if args.dry_run else reason
        print(f"bench/gpu.py: {why}. Nothing was run; run it on a host with NVIDIA GPUs.", file=sys.stderr)
        return EXIT_NO_GPU
    import torch

    count = torch.cuda.device_count()
    cases = plan(args.models, args.adapters, count)
    print_plan(cases, args)
    work = Path(tempfile.mkdtemp(prefix="gpurun-bench-gpu-"))
    data = work / "train.jsonl"
    rows = chat_rows(args.rows)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    peak = peak_tflops(listed)
    head = f"{'model':28} {'adapter':7} {'GPUs':>4} {'engine':9} {'tok/s':>9} {'trained/s':>9} "
    print(head + f"{'peak GB':>7} {'est GB':>6} {'loss':>7} {'MFU':>5} {'vs TRL':>6}")
    baseline: dict = {}
    for case in cases:
        model, adapter, processes, engine = case["model"], case["adapter"], case["processes"], case["engine"]
        tokens = mean_tokens(model, rows[:500], args.max_length)
        trained = mean_reply_tokens(model, rows[:500])
        opts = {**vars(args), "model": model, "data": str(data), "out": str(work / "trl-out"), "strategy": "ddp"}
        opts.update(adapter=adapter, engine=engine)
        run = run_gpurun if engine == "gpurun" else run_plain_trl
        result = run(opts, processes, work)
        where = f"{model[-28:]:28} {adapter:7} {processes:>4} {engine:9}"
        if "error" in result:
            print(f"{where} failed: {' '.join(result['error'])}")
            continue
        sps = result["samples_per_second"]
        speed = sps * tokens if sps else None
        if engine == "trl":
            baseline[(model, adapter, processes)] = sps
        base = baseline.get((model, adapter, processes))
        params = parameter_count(model)
        mfu = 6 * params * speed / (peak * 1e12 * processes) if speed and peak and params else None
        estimate = estimate_gb(model, adapter, args.batch, args.max_length)
        cells = [
            fmt(speed, "9.0f"),
            fmt(sps * trained if sps else None, "9.0f"),
            fmt(result["peak_mem_gb"], "7.2f"),
            fmt(estimate, "6.1f"),
            fmt(result["loss"], "7.4f"),
            fmt(mfu * 100 if mfu else None, "4.1f") + ("%" if mfu else ""),
            fmt(sps / base if sps and base else None, "6.2f"),
        ]
        print(f"{where} " + " ".join(cells))
    return 0


def mean_reply_tokens(model: str, rows: list[dict]) -> float:
    """The tokens a row trains on (its assistant reply), on average."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return sum(len(tokenizer(r["messages"][-1]["content"])["input_ids"]) + 1 for r in rows) / len(rows)


def parameter_count(model: str) -> int | None:
    from transformers import AutoConfig

    sys.path.insert(0, str(REPO))
    from trainer.training.memory import ModelShape

    try:
        return ModelShape.from_config(AutoConfig.from_pretrained(model).to_dict()).params()
    except Exception:  # noqa: BLE001 - not a decoder the formula knows: no MFU column
        return None


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
