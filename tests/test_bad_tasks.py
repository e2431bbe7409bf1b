"""Bad configs and bad data: one `Error:` line naming the key or file:line, a hint, exit 1, nothing on the host."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_gpurun


def edit_config(**changes):
    """A mutation of task.yaml: dotted keys set (None deletes)."""

    def mutate(task: Path) -> None:
        config = yaml.safe_load((task / "task.yaml").read_text())
        for dotted, value in changes.items():
            node = config
            *parents, leaf = dotted.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            if value is None:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        (task / "task.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    return mutate


def replace_line(name: str, number: int, text: str):
    def mutate(task: Path) -> None:
        lines = (task / name).read_text().splitlines(keepends=True)
        lines[number - 1] = text + "\n"
        (task / name).write_text("".join(lines))

    return mutate


def chat_row(*turns, **extra) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns], **extra}, ensure_ascii=False)


def raw_yaml(text: str):
    def mutate(task: Path) -> None:
        (task / "task.yaml").write_text(text)

    return mutate


def long_prompt_row(task: Path) -> None:
    """A row max_length leaves nothing to train: refused with data.drop_long: false (by default it is dropped)."""
    with (task / "data" / "train.jsonl").open("a") as fh:
        fh.write(chat_row(("user", "please " * 1500), ("assistant", '{"name": "get_manager"}')) + "\n")
    edit_config(data__drop_long=False)(task)


def padding_free_with_a_long_row(task: Path) -> None:
    with (task / "data" / "train.jsonl").open("a") as fh:
        fh.write(chat_row(("user", "hi"), ("assistant", "ok " * 500)) + "\n")
    edit_config(training__padding_free=True)(task)


CASES = [
    ("unknown top-level key", edit_config(bse_model="builtin:tiny"), "bse_model: unknown key"),
    ("unknown training key", edit_config(training__lerning_rate=1e-4), "training.lerning_rate: unknown key"),
    ("word for a number", edit_config(training__learning_rate="fast"), "training.learning_rate: expected float"),
    ("fraction for an int", edit_config(training__max_steps=1.5), "training.max_steps: expected int"),
    ("unknown optimizer", edit_config(training__optim="adamw"), "training.optim: 'adamw' is not allowed"),
    ("misspelt scheduler", edit_config(training__lr_scheduler_type="cosin"), "training.lr_scheduler_type"),
    ("unknown task kind", edit_config(task="regression"), "task: 'regression' is not allowed"),
    ("no base model", edit_config(base_model=None), "base_model: missing"),
    ("unknown builtin", edit_config(base_model="builtin:huge"), "unknown builtin 'builtin:huge'"),
    ("no training files", edit_config(data__train=[]), "data.train: no training data"),
    ("zero rank", edit_config(lora__r=0), "lora.r: must be > 0"),
    ("dropout out of range", edit_config(lora__dropout=1.5), "lora.dropout: must be in [0, 1)"),
    ("4 and 8 bit", edit_config(quantization={"load_in_4bit": True, "load_in_8bit": True}), "quantization: 4-bit"),
    ("bf16 and fp16", edit_config(training__bf16=True, training__fp16=True), "training.fp16: bf16 and fp16"),
    ("eval split out of range", edit_config(data__eval_split=1.5), "data.eval_split: must be in [0, 1)"),
    ("negative batch", edit_config(training__per_device_train_batch_size=-1), "per_device_train_batch_size"),
    ("training is a list", edit_config(training=[1, 2]), "training: expected a mapping"),
    ("format unknown", edit_config(data__format="xml"), "data.format: 'xml' is not allowed"),
    ("eval suite without file", edit_config(eval_suite={"max_new_tokens": 8}), "eval_suite.file: missing"),
    (
        "early stopping without evals",
        edit_config(early_stopping={"patience": 2}, training__eval_strategy="no"),
        "early_stopping: needs evaluations",
    ),
    ("broken YAML", raw_yaml("base_model: builtin:tiny\ntraining:\n  max_steps: [1\n"), "task.yaml:4: not valid YAML"),
    ("missing data file", edit_config(data__eval=["data/nope.jsonl"]), "tasks/hr/data/nope.jsonl: data file not found"),
    ("text file as data", edit_config(data__test=["task.yaml"]), "unknown file type '.yaml'"),
    ("malformed JSONL", replace_line("data/train.jsonl", 5, '{"messages": [}'), "data/train.jsonl:5: not valid JSON"),
    (
        "unknown role",
        replace_line("data/train.jsonl", 9, chat_row(("boss", "hi"), ("assistant", "x"))),
        "data/train.jsonl:9: messages[0]: unknown role 'boss'",
    ),
    (
        "no assistant turn",
        replace_line("data/eval.jsonl", 3, chat_row(("user", "hi"))),
        "data/eval.jsonl:3: `messages` has no assistant turn",
    ),
    (
        "empty answer",
        replace_line("data/train.jsonl", 2, chat_row(("user", "hi"), ("assistant", "  "))),
        "data/train.jsonl:2: messages[1]: empty assistant message",
    ),
    (
        "assistant first",
        replace_line("data/train.jsonl", 4, chat_row(("assistant", "x"), ("user", "hi"))),
        "data/train.jsonl:4: messages[0]: an assistant turn must follow a user turn",
    ),
    (
        "another format mid-file",
        replace_line("data/train.jsonl", 6, json.dumps({"prompt": "p", "response": "r"})),
        "data/train.jsonl:6: `messages` must be a non-empty list",
    ),
    (
        "eval suite row without its answer key",
        replace_line("data/test.jsonl", 2, chat_row(("user", "hi"), ("assistant", "x"))),
        "data/test.jsonl:2: the last assistant turn holds no `tool_calls`, so there is no call to score",
    ),
    ("answer cut off by max_length, drop_long off", long_prompt_row, "every trained token lies beyond max_length 1300"),
    ("padding-free cannot truncate", padding_free_with_a_long_row, "training.padding_free: 1 example(s) exceed"),
]


@pytest.mark.parametrize("case, mutate, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_task_is_one_clear_error_and_nothing_reaches_the_host(ssh_project, host_workdir, case, mutate, expected):
    mutate(ssh_project / "tasks" / "hr")
    # (the shipped rows, tools included, are 608-679 builtin:tiny tokens: 1300 fits them and not the long rows)
    result = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100", "--set", "training.max_length=1300")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1, (case, result.stdout, result.stderr)
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert any(line.startswith("Hint: ") and len(line) > 7 for line in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr
    assert not (host_workdir / "tasks").exists() and not (host_workdir / "runs").exists(), "something reached the host"


def test_bad_overrides_and_experiments_are_named(ssh_project, host_workdir):
    unknown = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100", "--set", "training.max_stepz=3")
    assert unknown.returncode == 1 and "Error: --set training.max_stepz: unknown key" in unknown.stderr
    assert "did you mean `max_steps`" in unknown.stderr
    missing = run_gpurun(ssh_project, "validate", "tasks/hr", "--exp", "nope")
    assert missing.returncode == 1 and "experiments/nope.yaml: no such experiment" in missing.stderr
    assert not (host_workdir / "tasks").exists()


def test_a_yaml_exponent_is_a_number_and_old_names_are_translated(ssh_project):
    edit_config(training__learning_rate="1e-5", training__max_seq_length=1280, training__max_length=None)(
        ssh_project / "tasks" / "hr"
    )
    result = run_gpurun(ssh_project, "validate", "tasks/hr")
    assert result.returncode == 0, result.stderr
    assert "`training.max_seq_length` is now `training.max_length`" in result.stdout
