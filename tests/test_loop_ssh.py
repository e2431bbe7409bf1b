"""The whole loop over a real sshd: push -> detached train -> logs -f -> pull, typed as users type it."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_gpurun


def load_and_generate(adapter_dir: Path) -> str:
    """What a user does with a pulled adapter: load it on its base model and generate."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.builtin.tiny import LOCAL_TINY_DIR, default_cache_dir, ensure_tiny

    base_path = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    if base_path == LOCAL_TINY_DIR:  # builtin:tiny: the folder `python -m trainer.tiny` builds; the same bytes
        base_path = str(ensure_tiny(default_cache_dir()))
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter_dir)
    messages = [{"role": "user", "content": "我还有几天年假？"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1], "generate produced no new token"
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1] :])


def latest_run_dir(project: Path, task: str) -> Path:
    runs = sorted((project / "tasks" / task / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.smoke  # kept by `scripts/test.sh --fast`
def test_four_user_commands_verbatim_over_ssh(ssh_project, host_workdir):
    push = run_gpurun(ssh_project, "push", "tasks/hr")
    assert push.returncode == 0, push.stderr
    train = run_gpurun(ssh_project, "train", "--host", "a100")
    assert train.returncode == 0, train.stderr
    assert "started hr-" in train.stdout
    logs = run_gpurun(ssh_project, "logs", "-f")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "succeeded" in logs.stdout
    assert "loss" in logs.stdout
    pull = run_gpurun(ssh_project, "pull")
    assert pull.returncode == 0, pull.stderr

    run_dir = latest_run_dir(ssh_project, "hr")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "trainer_state.json"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("checkpoint-*")), "checkpoints come only with --checkpoints"
    # The run really happened on the ssh host's workdir, not on the local one.
    assert (host_workdir / "runs" / run_dir.name / "exit_code").read_text().strip() == "0"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "log" and "loss" in e for e in events)
    assert events[-1]["kind"] == "done"
    assert load_and_generate(run_dir) is not None

    status = run_gpurun(ssh_project, "status")
    assert status.returncode == 0 and "succeeded" in status.stdout
    pull_ckpt = run_gpurun(ssh_project, "pull", "--checkpoints")
    assert pull_ckpt.returncode == 0, pull_ckpt.stderr
    assert list(run_dir.glob("checkpoint-*"))


def test_push_after_a_finished_run_leaves_its_outputs_on_the_host(ssh_project, host_workdir):
    assert run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100").returncode == 0
    assert run_gpurun(ssh_project, "logs", "-f").returncode == 0
    run_id = run_gpurun(ssh_project, "runs").stdout
    host_runs = host_workdir / "runs"
    before = {p.relative_to(host_runs): p.stat().st_size for p in host_runs.rglob("*") if p.is_file()}
    assert any(str(p).endswith("adapter_model.safetensors") for p in before), run_id

    # The task changes (a file removed, one added) and is pushed again with --delete semantics.
    task = ssh_project / "tasks" / "hr"
    (task / "notes.txt").write_text("new\n")
    (task / "data" / "test.jsonl").unlink()
    config = yaml.safe_load((task / "task.yaml").read_text())
    config["data"]["test"] = []
    config["eval_suite"] = None
    (task / "task.yaml").write_text(yaml.safe_dump(config))
    assert run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a100").returncode == 0

    after = {p.relative_to(host_runs): p.stat().st_size for p in host_runs.rglob("*") if p.is_file()}
    assert before.items() <= after.items(), "a push removed or changed a run's outputs"
    mirror = host_workdir / "tasks" / "hr"
    assert (mirror / "notes.txt").exists() and not (mirror / "data" / "test.jsonl").exists()


@pytest.mark.parametrize(
    "case, edit, expected",
    [
        ("unknown key", lambda t: _yaml_add(t, "training", "lerning_rate: 1e-4"), "training.lerning_rate"),
        ("missing data file", lambda t: (t / "data" / "eval.jsonl").unlink(), "data/eval.jsonl"),
        ("malformed JSONL line", lambda t: _corrupt_line(t / "data" / "train.jsonl", 7), "data/train.jsonl:7"),
    ],
)
def test_an_invalid_task_gives_one_error_line_and_pushes_nothing(ssh_project, host_workdir, case, edit, expected):
    edit(ssh_project / "tasks" / "hr")
    for command in (["push", "tasks/hr", "--host", "a100"], ["train", "tasks/hr", "--host", "a100"]):
        result = run_gpurun(ssh_project, *command)
        assert result.returncode == 1, (case, result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and expected in errors[0], result.stderr
        assert any(line.startswith("Hint:") for line in result.stderr.splitlines()), result.stderr
        assert "Traceback" not in result.stderr
    assert not (host_workdir / "tasks" / "hr").exists(), "an invalid task reached the host"


def _yaml_add(task: Path, section: str, line: str) -> None:
    text = (task / "task.yaml").read_text()
    (task / "task.yaml").write_text(text.replace(f"{section}:\n", f"{section}:\n  {line}\n", 1))


def _corrupt_line(path: Path, number: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = lines[number - 1][: len(lines[number - 1]) // 2] + "\n"
    path.write_text("".join(lines))
