"""Every recipe of the seeds trains builtin:tiny for a few steps on the CPU, for real.

The trainer runs in-process on a host layout made here (<workdir>/tasks/<t>, <workdir>/runs/<id>),
exactly as `python -m trainer run` runs it on a host.
"""

import csv
import json
from pathlib import Path

import pytest

from trainer.task.loading import config_from_dict, config_to_dict

CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Answer with a JSON call."},
            {"role": "user", "content": f"How many vacation days do I have left, question {i}?"},
            {"role": "assistant", "content": '{"name": "get_leave_balance", "arguments": {}}'},
        ]
    }
    for i in range(24)
]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)


def train_recipe(tmp_path: Path, files: dict[str, list[dict]], **config) -> Path:
    """Lay out a host workdir with one task and one run, run the trainer, return the run dir."""
    from trainer.training.run import run

    run_dir = lay_out_run(tmp_path, files, **config)
    assert run(run_dir) == 0, (run_dir / "events.jsonl").read_text() if (run_dir / "events.jsonl").exists() else ""
    return run_dir


def lay_out_run(tmp_path: Path, files: dict[str, list[dict]], **config) -> Path:
    """A host workdir with one task and one run's run.json, as `start` leaves it; returns the run dir."""
    workdir = tmp_path / "host"
    task_dir = workdir / "tasks" / "t"
    for name, rows in files.items():
        write_rows(task_dir / name, rows)
    raw = {
        "base_model": "builtin:tiny",
        "data": {"train": [next(iter(files))]},
        "lora": {"r": 4, "alpha": 8},
        "samples": 1,
        **config,
    }
    raw["training"] = {
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_steps": 2,
        "max_length": 128,
        **config.get("training", {}),
    }
    run_dir = workdir / "runs" / "r1"
    (run_dir / "output").mkdir(parents=True)
    record = {"run_id": "r1", "task": "t", "config": config_to_dict(config_from_dict(raw))}
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


def events_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def assert_trained(run_dir: Path, adapter: bool = True, loss_key: str = "loss") -> None:
    output = run_dir / "output"
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    assert (output / weights).is_file(), sorted(p.name for p in output.iterdir())
    assert (output / "tokenizer.json").is_file() and (output / "trainer_state.json").is_file()
    logged = [e for e in events_of(run_dir) if e["kind"] == "log" and loss_key in e]
    assert logged and all(isinstance(e[loss_key], float) for e in logged), events_of(run_dir)
    assert events_of(run_dir)[-1]["kind"] == "done"
    assert list(output.glob("checkpoint-*/.gpurun-complete"))


def test_sft_on_chat_messages_jsonl(tmp_path):
    run_dir = train_recipe(tmp_path, {"train.jsonl": CHAT})
    assert_trained(run_dir)
    assert (run_dir / "output" / "samples.jsonl").read_text().strip()


def test_sft_on_sharegpt_json(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": f"hello {i}"}, {"from": "gpt", "value": "hi there"}]}
        for i in range(12)
    ]
    assert_trained(train_recipe(tmp_path, {"train.json": rows}))


def test_sft_on_alpaca_csv(tmp_path):
    rows = [{"instruction": "Translate to French", "input": f"cat {i}", "output": "chat"} for i in range(12)]
    assert_trained(train_recipe(tmp_path, {"train.csv": rows}))


def test_sft_on_prompt_response_parquet_with_mapped_columns(tmp_path):
    rows = [{"question": f"2+{i}?", "answer": str(2 + i)} for i in range(12)]
    run_dir = train_recipe(
        tmp_path, {"train.parquet": rows}, data={"train": ["train.parquet"], "prompt_column": "question",
                                                  "response_column": "answer"}
    )  # fmt: skip
    assert_trained(run_dir)


def test_sft_on_plain_text_with_eval_split(tmp_path):
    rows = [{"text": f"The quick brown fox number {i} jumps over the lazy dog."} for i in range(20)]
    run_dir = train_recipe(
        tmp_path,
        {"train.jsonl": rows},
        data={"train": ["train.jsonl"], "eval_split": 0.2},
        training={"eval_strategy": "steps", "eval_steps": 2},
    )
    assert_trained(run_dir)
    assert any(e["kind"] == "eval" for e in events_of(run_dir))


def test_full_fine_tune_when_lora_is_null(tmp_path):
    run_dir = train_recipe(tmp_path, {"train.jsonl": CHAT}, lora=None)
    assert_trained(run_dir, adapter=False)


def test_packing(tmp_path):
    assert_trained(train_recipe(tmp_path, {"train.jsonl": CHAT}, training={"packing": True, "max_length": 256}))


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_with_bitsandbytes(tmp_path, bits):
    quantization = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32"} if bits == 4 else {"load_in_8bit": True}
    run_dir = train_recipe(tmp_path, {"train.jsonl": CHAT}, quantization=quantization)
    assert_trained(run_dir)
    state = json.loads((run_dir / "output" / "task_config.json").read_text())
    assert state["quantization"][f"load_in_{bits}bit"] is True


PREFERENCE = [
    {"prompt": f"Route: my payslip {i}", "chosen": '{"name": "get_payslip"}', "rejected": "I don't know."}
    for i in range(12)
]


@pytest.mark.parametrize("task", ["orpo", "dpo"])
def test_preference_recipes(tmp_path, task):
    run_dir = train_recipe(tmp_path, {"train.jsonl": PREFERENCE}, task=task, samples=0)
    assert_trained(run_dir)


def test_sequence_classification_with_lora_reports_accuracy(tmp_path):
    rows = [{"text": f"please book leave {i}", "label": "leave"} for i in range(8)]
    rows += [{"text": f"send my payslip {i}", "label": "pay"} for i in range(8)]
    run_dir = train_recipe(
        tmp_path,
        {"train.jsonl": rows, "eval.jsonl": rows[:4] + rows[-4:]},
        task="classification",
        data={"train": ["train.jsonl"], "eval": ["eval.jsonl"]},
        training={"eval_strategy": "steps", "eval_steps": 2},
    )
    assert_trained(run_dir)
    assert json.loads((run_dir / "output" / "labels.json").read_text()) == ["leave", "pay"]
    assert any("eval_accuracy" in e for e in events_of(run_dir))


def test_early_stopping_and_best_model(tmp_path):
    run_dir = train_recipe(
        tmp_path,
        {"train.jsonl": CHAT, "eval.jsonl": CHAT[:4]},
        data={"train": ["train.jsonl"], "eval": ["eval.jsonl"]},
        early_stopping={"patience": 1, "threshold": 10.0},  # nothing improves by 10: stops after 2 evals
        training={"max_steps": 40, "eval_strategy": "steps", "eval_steps": 2, "save_steps": 2},
    )
    assert_trained(run_dir)
    state = json.loads((run_dir / "output" / "trainer_state.json").read_text())
    assert state["global_step"] < 40 and state["best_model_checkpoint"]


def test_eval_suite_reports_accuracy_before_and_after(tmp_path):
    suite = [{**row, "expected_function": "get_leave_balance"} for row in CHAT[:3]]
    run_dir = train_recipe(
        tmp_path,
        {"train.jsonl": CHAT, "test.jsonl": suite},
        eval_suite={
            "file": "test.jsonl",
            "max_new_tokens": 8,
            "expected_field": "expected_function",
            "json_field": "name",
        },
    )
    (event,) = [e for e in events_of(run_dir) if e["kind"] == "eval_suite"]
    assert event["total"] == 3 and 0 <= event["accuracy"] <= 1 and event["baseline_accuracy"] is not None


def test_padding_free(tmp_path):
    assert_trained(train_recipe(tmp_path, {"train.jsonl": CHAT}, training={"padding_free": True}))
