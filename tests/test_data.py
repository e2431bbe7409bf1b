"""Row checks: every bad row as file:line, all at once; formats detected per file; one shape out."""

import json
from pathlib import Path

import pytest

from trainer.task.loading import config_from_dict
from trainer.task.problems import TaskError
from trainer.task.splits import load_task_data

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def task_with(tmp_path: Path, rows: list, name: str = "train.jsonl", **data) -> tuple[Path, object]:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": [name], **data}})
    return tmp_path, config


def problems(tmp_path, rows, **data) -> list[str]:
    task_dir, config = task_with(tmp_path, rows, **data)
    with pytest.raises(TaskError) as info:
        load_task_data(task_dir, config)
    return [str(p) for p in info.value.problems]


def test_malformed_line_is_named_by_file_and_line(tmp_path):
    (problem,) = problems(tmp_path, [CHAT, CHAT, '{"messages": [', CHAT])
    assert problem.startswith(f"{tmp_path}/train.jsonl:3: not valid JSON")


def test_all_bad_rows_are_reported_at_once(tmp_path):
    bad_role = {"messages": [{"role": "bot", "content": "x"}]}
    no_answer = {"messages": [{"role": "user", "content": "x"}]}
    two_users = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    found = problems(tmp_path, [CHAT, bad_role, no_answer, two_users])
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in found] == ["2", "3", "4"]
    assert "unknown role 'bot'" in found[0] and "no assistant turn" in found[1] and "two user turns" in found[2]


def test_mixed_formats_in_one_file_are_rejected_row_by_row(tmp_path):
    (problem,) = problems(tmp_path, [CHAT, {"prompt": "p", "response": "r"}])
    assert ":2:" in problem and "`messages`" in problem


def test_alpaca_and_sharegpt_become_messages(tmp_path):
    alpaca = {"instruction": "Translate", "input": "hola", "output": "hello"}
    task_dir, config = task_with(tmp_path, [alpaca], shuffle=False)
    (row,) = load_task_data(task_dir, config)["train"]
    assert row["messages"][0] == {"role": "user", "content": "Translate\n\nhola"}
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    task_dir, config = task_with(tmp_path, [sharegpt], name="s.jsonl")
    (row,) = load_task_data(task_dir, config)["train"]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_prompt_response_columns_are_mappable(tmp_path):
    rows = [{"question": "q", "answer": "a", "system": "be brief"}]
    task_dir, config = task_with(tmp_path, rows, prompt_column="question", response_column="answer")
    (row,) = load_task_data(task_dir, config)["train"]
    assert row["prompt"][0] == {"role": "system", "content": "be brief"}
    assert row["completion"] == [{"role": "assistant", "content": "a"}]


def test_csv_rows_are_named_by_their_line(tmp_path):
    (tmp_path / "t.csv").write_text("prompt,response\nq1,a1\nq2,\n")
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["t.csv"]}})
    with pytest.raises(TaskError) as info:
        load_task_data(tmp_path, config)
    assert str(info.value.problems[0]) == f"{tmp_path}/t.csv:3: `response` is empty"


def test_eval_split_holds_out_rows(tmp_path):
    task_dir, config = task_with(tmp_path, [CHAT] * 10, eval_split=0.2)
    splits = load_task_data(task_dir, config)
    assert (len(splits["train"]), len(splits["eval"])) == (8, 2)


def test_hub_datasets_load_through_datasets_on_a_local_path(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text((json.dumps(CHAT) + "\n") * 3)
    config = config_from_dict(
        {"base_model": "builtin:tiny", "data": {"train": [f"hub:{folder}:train"], "shuffle": False}}
    )
    splits = load_task_data(tmp_path, config)
    assert len(splits["train"]) == 3 and splits["train"][0]["messages"] == CHAT["messages"]
    assert splits["train"][0]["_where"] == f"hub:{folder}:train:1"


def test_a_hub_dataset_that_does_not_load_is_a_problem_not_a_crash(tmp_path):
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": [f"hub:{tmp_path}/missing"]}})
    with pytest.raises(TaskError) as info:
        load_task_data(tmp_path, config)
    assert str(info.value.problems[0]).startswith(f"hub:{tmp_path}/missing: could not load")


def test_a_flood_of_bad_rows_is_capped_with_the_total(tmp_path):
    found = problems(tmp_path, ["{"] * 30)
    assert len(found) == 21 and found[-1] == "... and 10 more problems (30 in all)"


def _nested(depth: int, leaf: str = '"x"') -> str:
    return "[" * depth + leaf + "]" * depth


def test_lone_surrogates_and_deep_nesting_in_rows_are_still_refused(tmp_path):
    lines = [
        '{"messages": [{"role": "user", "content": "\\udc00"}, {"role": "assistant", "content": "ok"}]}',
        '{"text": ' + _nested(40) + "}",
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(lines) + "\n")
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["data/train.jsonl"]}})
    with pytest.raises(TaskError) as caught:
        load_task_data(tmp_path, config)
    said = "\n".join(str(p) for p in caught.value.problems)
    assert "train.jsonl:1" in said and "lone surrogate \\udc00" in said, said
    assert "train.jsonl:2" in said and "nested more than 32 levels deep" in said, said
