"""train.log is for people: no library noise in it, and the work after the last step says what it does.

Library warnings, logging and progress bars go to debug.log beside train.log (trainer/training/quiet.py);
real errors and tracebacks stay in train.log.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from launcher.render import Dashboard
from tests.conftest import REPO, run_gpurun

NOISE = ("FutureWarning", "kernels-community", "Loading weights", "Writing model shards")


def noisy_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if "\r" in line or any(word in line for word in NOISE)]


def started_run_id(stdout: str) -> str:
    return stdout.split("started ", 1)[1].split()[0]


def test_a_qlora_run_and_its_merge_write_no_library_noise_where_people_read(local_project):
    # Generating in 4 bit on a CPU is slow: one sample and one eval-suite row, of a few tokens, say enough.
    short = ["--set", "samples=1", "--set", "eval_suite.limit=1", "--set", "eval_suite.max_new_tokens=8"]
    train = run_gpurun(local_project, "train", "tasks/demo", "--exp", "qlora", *short)
    assert train.returncode == 0, train.stdout + train.stderr
    run_dir = local_project.parent / "local-workdir" / "runs" / started_run_id(train.stdout)
    logs = run_gpurun(local_project, "logs", "-f", timeout=900)
    assert logs.returncode == 0, logs.stdout + logs.stderr
    merge = run_gpurun(local_project, "merge")
    assert merge.returncode == 0, merge.stdout + merge.stderr

    train_log = (run_dir / "train.log").read_bytes().decode()
    assert "[summary] step 6/6" in train_log  # the run really trained, in 4 bit, and says so
    assert "base model loaded in 4 bit (nf4) by bitsandbytes (QLoRA)" in train_log, train_log
    assert json.loads((run_dir / "run.json").read_text())["config"]["quantization"]["load_in_4bit"] is True
    assert noisy_lines(train_log) == []
    assert noisy_lines(logs.stdout + logs.stderr) == []
    assert noisy_lines(merge.stdout + merge.stderr) == []
    # Kept, not dropped: transformers' deprecation warnings are in debug.log.
    assert "FutureWarning" in (run_dir / "debug.log").read_text()


def test_the_work_after_the_last_step_is_announced_in_train_log_and_reported_as_phases(local_project):
    train = run_gpurun(local_project, "train", "tasks/demo")
    assert train.returncode == 0, train.stdout + train.stderr
    run_dir = local_project.parent / "local-workdir" / "runs" / started_run_id(train.stdout)
    assert run_gpurun(local_project, "logs", "-f", timeout=900).returncode == 0

    lines = (run_dir / "train.log").read_text().splitlines()
    after = lines[next(i for i, line in enumerate(lines) if line.startswith("[summary]")) + 1 :]
    assert [line.split("]")[0] + "]" for line in after if line.startswith("[")] == [
        "[saving]",
        "[samples]",
        "[eval_suite]",
        "[baseline]",
    ]
    assert "[eval_suite] 2 test requests, answered by the trained model" in after
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    phases = [e for e in events if e["kind"] == "phase"]
    for name in ("saving", "samples", "eval_suite", "baseline"):
        of_phase = [(e["done"], e["total"]) for e in phases if e["phase"] == name]
        assert of_phase[0][0] == 0 and of_phase[-1][0] == of_phase[-1][1] > 0, (name, of_phase)
    assert events[-1]["kind"] == "done"


def test_library_noise_goes_to_debug_log_while_errors_and_tracebacks_stay_in_train_log(tmp_path):
    script = """
import logging, sys, warnings
from pathlib import Path
from trainer.training.quiet import route_library_noise
route_library_noise(Path(sys.argv[1]))
from transformers.utils import logging as transformers_logging
# bitsandbytes says this at import on a CPU with AVX512-BF16 and no `kernels` package
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: no kernels")
warnings.warn("`x` is deprecated and will be removed in v6", FutureWarning)
transformers_logging.get_logger("transformers.modeling_utils").warning("a transformers warning")
logging.getLogger("datasets.builder").warning("a datasets warning")
logging.getLogger("torch.distributed").error("the disk is on fire")
print("[log] step 1/1 loss=1", flush=True)
raise RuntimeError("the run failed for real")
"""
    log = tmp_path / "train.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "debug.log")], cwd=REPO, stdout=out, stderr=out, timeout=120
        )
    assert proc.returncode == 1
    train_log, debug_log = log.read_text(), (tmp_path / "debug.log").read_text()
    assert noisy_lines(train_log) == [] and "a transformers warning" not in train_log
    assert "[log] step 1/1 loss=1" in train_log
    assert "error (torch.distributed): the disk is on fire" in train_log
    assert "Traceback" in train_log and "RuntimeError: the run failed for real" in train_log
    for kept in ("kernels-community", "FutureWarning", "a transformers warning", "a datasets warning"):
        assert kept in debug_log, kept


def test_the_live_view_shows_the_current_phase_instead_of_a_frozen_full_bar():
    console = Console(record=True, width=160, force_terminal=False)
    dashboard = Dashboard(console, "demo-1")
    dashboard.events([{"t": 1, "kind": "log", "step": 6, "total_steps": 6, "loss": 1.5}])
    console.print(dashboard._view())
    assert "step 6/6" in console.export_text()
    dashboard.events([{"t": 2, "kind": "phase", "phase": "eval_suite", "done": 2, "total": 4}])
    console.print(dashboard._view())
    shown = console.export_text()
    assert "eval suite, trained model 2/4" in shown and "(training done: step 6/6)" in shown
    dashboard.events([{"t": 3, "kind": "done", "step": 6, "total_steps": 6}])
    console.print(dashboard._view())
    assert "eval suite" not in console.export_text()


def test_stop_says_what_it_waits_for(local_project):
    train = run_gpurun(local_project, "train", "tasks/demo", "--set", "training.max_steps=5000")
    assert train.returncode == 0, train.stdout + train.stderr
    run_id = started_run_id(train.stdout)
    events = local_project.parent / "local-workdir" / "runs" / run_id / "events.jsonl"
    deadline = time.time() + 300
    while '"kind": "log"' not in (events.read_text() if events.exists() else ""):
        assert time.time() < deadline, "the run never logged a step"
        time.sleep(0.5)
    stop = run_gpurun(local_project, "stop", run_id, "--grace", "120")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"stopping {run_id}: waiting for the checkpoint at the next step (SIGKILL after 120s)…" in stop.stdout
    assert stop.stdout.rstrip().endswith(f"{run_id}: stopped")
    assert noisy_lines(Path(events.parent / "train.log").read_text()) == []
