"""SFT rows are tokenized once, by the token checks, and cached by content on the host for the next run.

The cache key changes with anything that changes the tokens (a byte of the data, max_length, the chat
template, ...); a second run of the same data loads the tokens instead of tokenizing (and says so in
train.log); a cache folder that is not whole is never trusted.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainer.builtin.tiny import ensure_tiny
from trainer.task.loading import config_from_dict
from trainer.task.splits import load_task_data
from trainer.training.model import load_tokenizer
from trainer.training.tokencache import cache_key, checked_tokens
from trainer.training.tokens import mask_of, training_chat_template

TOOLS = [{"type": "function", "function": {"name": "get_payslip", "parameters": {"type": "object", "properties": {}}}}]
ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Route HR requests."},
            {"role": "user", "content": f"Show my payslip for month {i}"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "get_payslip", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true}'},
            {"role": "assistant", "content": f"Here it is, month {i}."},
        ],
        "tools": TOOLS,
    }
    for i in range(12)
]


def write_task(task_dir: Path, rows: list[dict] = ROWS) -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def config(**training):
    raw = {"base_model": "builtin:tiny", "data": {"train": ["train.jsonl"], "eval_split": 0.25}}
    return config_from_dict({**raw, "training": {"max_length": 512, **training}})


@pytest.fixture
def tokenizer(model_cache):
    return load_tokenizer(str(ensure_tiny()))


def key_of(task_dir: Path, tokenizer, cfg=None) -> str:
    cfg = cfg or config()
    return cache_key(cfg, tokenizer, load_task_data(task_dir, cfg), task_dir)


def test_the_key_changes_with_a_byte_of_data_max_length_or_the_chat_template(tmp_path, tokenizer):
    write_task(tmp_path)
    key = key_of(tmp_path, tokenizer)
    assert key_of(tmp_path, load_tokenizer(str(ensure_tiny()))) == key  # same content, a new process's tokenizer

    assert key_of(tmp_path, tokenizer, config(max_length=511)) != key
    changed = tokenizer.chat_template.replace("<|im_start|>assistant", "<|im_start|>model")
    assert changed != tokenizer.chat_template
    tokenizer.chat_template, original = changed, tokenizer.chat_template
    assert key_of(tmp_path, tokenizer) != key
    tokenizer.chat_template = original

    data = tmp_path / "train.jsonl"
    data.write_bytes(data.read_bytes().replace(b"month 7", b"month 8", 1))  # one byte
    assert key_of(tmp_path, tokenizer) != key


def test_the_cached_tokens_are_the_checked_tokens_and_a_second_call_reuses_them(tmp_path, tokenizer):
    write_task(tmp_path)
    cfg = config()
    splits = load_task_data(tmp_path, cfg)
    said: list[str] = []
    problems, first = checked_tokens(cfg, tokenizer, splits, tmp_path, tmp_path / "cache", said.append)
    assert problems == [] and not first.reused
    assert said[-1].startswith("tokenized data: 12 rows, cached in ")
    assert (len(first.train), len(first.eval)) == (9, 3)

    template = training_chat_template(tokenizer)
    for row, tokenized in zip(splits["train"] + splits["eval"], [*first.train, *first.eval], strict=True):
        ids, mask = mask_of(row, tokenizer, template)
        assert tokenized["input_ids"] == ids
        assert tokenized["labels"] == [t if m else -100 for t, m in zip(ids, mask, strict=True)]

    said.clear()
    problems, second = checked_tokens(cfg, tokenizer, splits, tmp_path, tmp_path / "cache", said.append)
    assert problems == [] and second.reused
    assert said == [said[0], "tokenized data: reused from cache (12 rows)"] and said[0].startswith("tokens per example")
    assert second.train["labels"] == first.train["labels"] and second.eval["input_ids"] == first.eval["input_ids"]


def test_a_half_written_cache_folder_is_ignored_and_replaced(tmp_path, tokenizer):
    write_task(tmp_path)
    cfg = config()
    splits = load_task_data(tmp_path, cfg)
    folder = tmp_path / "cache" / key_of(tmp_path, tokenizer)
    (folder / "train").mkdir(parents=True)  # what a run killed mid-write could leave (had it written in place)
    (folder / "train" / "data-00000-of-00001.arrow").write_bytes(b"\0" * 100)

    problems, tokenized = checked_tokens(cfg, tokenizer, splits, tmp_path, tmp_path / "cache", lambda _: None)
    assert problems == [] and not tokenized.reused
    assert json.loads((folder / "meta.json").read_text())["rows"] == 12  # replaced by a whole cache
    assert not list((tmp_path / "cache").glob(".tmp-*"))

    (folder / "train" / "data-00000-of-00001.arrow").write_bytes(b"broken")  # a cache damaged later
    problems, again = checked_tokens(cfg, tokenizer, splits, tmp_path, tmp_path / "cache", lambda _: None)
    assert problems == [] and not again.reused and again.train["labels"] == tokenized.train["labels"]


def test_rows_that_fail_the_token_checks_are_not_cached(tmp_path, tokenizer):
    write_task(tmp_path)
    cfg = config(max_length=8)  # every answer beyond max_length
    problems, tokenized = checked_tokens(
        cfg, tokenizer, load_task_data(tmp_path, cfg), tmp_path, tmp_path / "cache", lambda _: None
    )
    assert problems and tokenized is None
    assert not (tmp_path / "cache").exists()


def test_a_cache_that_cannot_be_written_costs_the_run_nothing(tmp_path, tokenizer):
    write_task(tmp_path)
    (tmp_path / "cache").write_text("a file where the cache folder would go")
    said: list[str] = []
    cfg = config()
    problems, tokenized = checked_tokens(
        cfg, tokenizer, load_task_data(tmp_path, cfg), tmp_path, tmp_path / "cache" / "tokenized", said.append
    )
    assert problems == [] and len(tokenized.train) == 9
    assert said[-1].startswith("tokenized data: 12 rows, not cached (")


def run_twice(tmp_path: Path) -> list[Path]:
    """Two runs of one task in one host workdir, as `gpurun train` then `gpurun train` again would make them."""
    from trainer.task.loading import config_to_dict
    from trainer.training.run import run

    workdir = tmp_path / "host"
    write_task(workdir / "tasks" / "t")
    cfg = config(max_steps=2, per_device_train_batch_size=4, logging_steps=1, eval_strategy="no", save_steps=2)
    cfg.samples = 0
    run_dirs = []
    for run_id in ("r1", "r2"):
        run_dir = workdir / "runs" / run_id
        (run_dir / "output").mkdir(parents=True)
        record = {"run_id": run_id, "task": "t", "config": config_to_dict(cfg)}
        (run_dir / "run.json").write_text(json.dumps(record))
        assert run(run_dir) == 0, (run_dir / "events.jsonl").read_text()
        run_dirs.append(run_dir)
    return run_dirs


def test_a_second_run_of_the_same_data_trains_on_the_cached_tokens_and_says_so(tmp_path, model_cache, capsys):
    first, second = run_twice(tmp_path)
    out = capsys.readouterr().out
    assert "tokenized data: 12 rows, cached in " in out
    assert out.count("tokenized data: reused from cache (12 rows)") == 1
    assert out.index("cached in") < out.index("reused from cache")

    def losses(run_dir: Path) -> list[float]:
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        return [e["loss"] for e in events if e["kind"] == "log" and "loss" in e]

    assert len(losses(first)) == 2 and losses(second) == losses(first)  # the same tokens, the same labels


@pytest.mark.trains  # builds its own model cache: not for --fast
def test_the_data_path_benchmark_runs_end_to_end_on_a_few_rows(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "data_path.py"), "--rows", "16", "--kind", "chat"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["rows"] == 16 and numbers["ratio_cold"] > 0 and numbers["ratio_warm"] > 0
    assert "reused from cache (16 rows)" in result.stdout
