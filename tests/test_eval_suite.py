"""The eval suite scores what a router must get right: the called function's name, its arguments, or an answer.

Pure tests of the reply parser, the scoring modes and the config checks; one real short run on builtin:tiny
that carries the figures into events.jsonl and `gpurun status`.
"""

import json

import pytest
import yaml

from tests.conftest import run_gpurun
from trainer.task.loading import config_from_dict
from trainer.task.problems import TaskError
from trainer.task.schema import TaskConfig
from trainer.task.splits import load_task_data
from trainer.training.evaluate import parse_tool_calls, score, score_text, score_warning, template_calls

BASE = {"base_model": "builtin:tiny", "data": {"train": ["data/train.jsonl"]}}
LEAVE = {"name": "request_leave", "arguments": {"leave_type": "sick", "start_date": "2026-03-03"}}


def block(name: str, arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# ---------------------------------------------------------------- the parser


def test_a_tool_call_block_is_read_as_the_template_writes_it():
    reply = block("request_leave", {"leave_type": "sick", "start_date": "2026-03-03"})
    assert parse_tool_calls(reply) == [LEAVE]


def test_every_block_of_a_reply_is_read_in_order():
    reply = block("get_manager", {}) + "\n" + block("query_salary", {"month": "2026-01"})
    assert parse_tool_calls(reply) == [
        {"name": "get_manager", "arguments": {}},
        {"name": "query_salary", "arguments": {"month": "2026-01"}},
    ]


def test_arguments_written_as_a_json_string_are_parsed_as_openai_writes_them():
    reply = block("request_leave", json.dumps(LEAVE["arguments"]))
    assert parse_tool_calls(reply) == [LEAVE]


def test_arguments_in_a_string_that_is_not_json_are_kept_and_never_match():
    (call,) = parse_tool_calls(block("request_leave", "sick, 2026-03-03"))
    assert call == {"name": "request_leave", "arguments": "sick, 2026-03-03"}


def test_a_bare_json_object_with_a_name_counts_when_there_is_no_block():
    reply = 'Sure. {"note": 1} then {"name": "get_manager", "arguments": {}} done'
    assert parse_tool_calls(reply) == [{"name": "get_manager", "arguments": {}}]


def test_a_block_cut_off_after_a_complete_call_still_counts():
    reply = block("get_manager", {}).removesuffix("</tool_call>")
    assert parse_tool_calls(reply) == [{"name": "get_manager", "arguments": {}}]


@pytest.mark.parametrize(
    "reply",
    ["", "I cannot help with that.", "<tool_call>\n{not json}\n</tool_call>", '{"arguments": {}}', "{{{", '["x"]'],
)
def test_garbage_holds_no_call(reply):
    assert parse_tool_calls(reply) == []


class ParsingTokenizer:
    """A tokenizer with a response template: transformers' parse_response gives the message, calls included."""

    response_template = {"kind": "a template of this model's own syntax"}

    def __init__(self, message):
        self.message = message

    def parse_response(self, response, prefix=None, tools=None):
        if isinstance(self.message, Exception):
            raise self.message
        return self.message


def test_a_response_template_reads_the_calls_when_the_tokenizer_has_one():
    message = {"role": "assistant", "tool_calls": [{"type": "function", "function": LEAVE}]}
    assert template_calls(ParsingTokenizer(message), [5, 6], [1, 2], None) == [LEAVE]


def test_without_a_response_template_or_when_it_fails_the_text_parser_is_used():
    assert template_calls(object(), [5], [1], None) == []
    assert template_calls(ParsingTokenizer(ValueError("no match")), [5], [1], None) == []


# ---------------------------------------------------------------- scoring


CALL_ROWS = [{"call": LEAVE}, {"call": {"name": "get_manager", "arguments": {}}}, {"call": LEAVE}]


def test_tool_calls_score_the_name_and_the_arguments_apart():
    replies = [
        block("request_leave", {"start_date": "2026-03-03", "leave_type": "sick"}),  # key order does not matter
        block("get_manager", {"extra": 1}),  # right function, wrong arguments
        "no call at all",
    ]
    result = score(CALL_ROWS, replies)
    assert result["mode"] == "tool_call"
    assert (result["name_accuracy"], result["arguments_accuracy"], result["parsed"]) == (2 / 3, 1 / 3, 2)
    assert result["accuracy"] == result["name_accuracy"] and result["total"] == 3
    assert score_text(result) == "name 0.667 · args 0.333 · 2/3 replies held a call"


def test_right_arguments_under_the_wrong_name_do_not_count():
    result = score([{"call": LEAVE}], [block("cancel_leave", LEAVE["arguments"])])
    assert (result["name_accuracy"], result["arguments_accuracy"]) == (0.0, 0.0)


def test_only_the_first_call_of_a_reply_is_scored():
    replies = [block("get_manager", {}) + block("request_leave", LEAVE["arguments"])]
    assert score([{"call": LEAVE}], replies)["name_accuracy"] == 0.0


def test_a_plain_expected_answer_is_an_exact_match_after_strip():
    rows = [{"expected": "leave"}, {"expected": "pay"}, {"expected": "pay"}]
    result = score(rows, ["  leave\n", "Pay", "pay please"])
    assert (result["mode"], result["accuracy"], result["correct"]) == ("answer", 1 / 3, 1)
    assert score_text(result) == "accuracy 0.333 (1/3)"


def test_a_json_field_of_the_reply_is_compared_with_the_expected_value():
    rows = [{"expected": "leave"}, {"expected": "pay"}, {"expected": "pay"}, {"expected": 3}]
    replies = ['{"intent": "leave", "why": "asked"}', '{"intent": "leave"}', "pay", 'ok {"intent": 3}']
    result = score(rows, replies, json_field="intent")
    assert (result["mode"], result["correct"], result["parsed"]) == ("json_field", 2, 3)


def test_an_intent_router_scored_as_a_plain_answer_is_told_about_json_field():
    result = score([{"expected": "leave"}], ['{"intent": "leave"}'])
    assert result["accuracy"] == 0.0
    assert "set eval_suite.json_field" in score_warning(result)


def test_no_reply_holding_a_call_is_a_warning_naming_how_many():
    result = score(CALL_ROWS, ["hello", "", "{oops"])
    assert score_warning(result) == (
        "eval suite: none of the 3 replies held a tool call (<tool_call> block or JSON with a name); "
        "hint: read output/samples.jsonl, train longer, or raise eval_suite.max_new_tokens"
    )
    assert score_warning(score(CALL_ROWS, [block("get_manager", {})] * 3)) is None


def test_no_reply_being_json_is_a_warning_in_json_field_mode():
    result = score([{"expected": "leave"}], ["leave"], json_field="intent")
    assert "none of the 1 replies was a JSON object, so `intent` was never found" in score_warning(result, "intent")


# ---------------------------------------------------------------- config and rows


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(TaskError) as info:
        config_from_dict(raw)
    return [f"{p} | {p.hint}" for p in info.value.problems]


def test_json_field_without_expected_field_is_one_error_with_an_example():
    (problem,) = problems_of({**BASE, "eval_suite": {"file": "data/test.jsonl", "json_field": "intent"}})
    assert problem == (
        "eval_suite.json_field: needs eval_suite.expected_field, the column holding the value that field must equal"
        " | e.g. eval_suite: {file: data/test.jsonl, expected_field: intent, json_field: intent}"
    )


def test_a_json_field_that_is_not_a_name_is_refused():
    (problem,) = problems_of({**BASE, "eval_suite": {"file": "t.jsonl", "expected_field": "a", "json_field": [1]}})
    assert problem.startswith("eval_suite.json_field:")


def suite_rows(tmp_path, rows: list[dict], **suite) -> list[dict]:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    (tmp_path / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = config_from_dict({**BASE, "eval_suite": {"file": "data/test.jsonl", **suite}})
    return load_task_data(tmp_path, config)["eval_suite"]


def test_the_shipped_test_rows_expect_their_own_first_tool_call(tmp_path):
    from tests.conftest import REPO

    row = json.loads((REPO / "tasks" / "demo" / "data" / "test.jsonl").read_text().splitlines()[0])
    (suite_row,) = suite_rows(tmp_path, [row])
    arguments = json.loads(row["messages"][-1]["tool_calls"][0]["function"]["arguments"])
    assert suite_row["call"] == {
        "name": row["messages"][-1]["tool_calls"][0]["function"]["name"],
        "arguments": arguments,
    }
    assert [m["role"] for m in suite_row["messages"]] == ["system", "user"]  # the answer is not in the prompt
    assert len(suite_row["tools"]) == 9


def test_a_row_without_a_call_or_an_expected_answer_is_a_clear_row_problem(tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    with pytest.raises(TaskError) as info:
        suite_rows(tmp_path, [row])
    assert str(info.value).endswith(
        "data/test.jsonl:1: the last assistant turn holds no `tool_calls`, so there is no call to score: "
        "add one, or set eval_suite.expected_field to a column holding the expected answer"
    )


def test_a_row_missing_its_expected_column_names_the_column(tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(TaskError) as info:
        suite_rows(tmp_path, [row], expected_field="intent")
    assert "data/test.jsonl:1: missing `intent` (the expected answer, eval_suite.expected_field)" in str(info.value)


def test_sharegpt_function_call_rows_are_suite_rows_too(tmp_path):
    row = {
        "tools": json.dumps([{"name": "get_manager", "parameters": {"type": "object", "properties": {}}}]),
        "conversations": [
            {"from": "human", "value": "Who is my boss?"},
            {"from": "function_call", "value": json.dumps({"name": "get_manager", "arguments": {}})},
        ],
    }
    (suite_row,) = suite_rows(tmp_path, [row])
    assert suite_row["call"] == {"name": "get_manager", "arguments": {}}


def test_eval_suite_defaults_score_tool_calls():
    assert TaskConfig().eval_suite is None
    config = config_from_dict({**BASE, "eval_suite": {"file": "data/test.jsonl"}})
    assert (config.eval_suite.expected_field, config.eval_suite.json_field) == ("", "")


# ---------------------------------------------------------------- one real run


def test_a_short_demo_run_reports_name_and_argument_accuracy_in_events_and_status(local_project):
    task = local_project / "tasks" / "demo"
    config = yaml.safe_load((task / "task.yaml").read_text())
    config["training"].update(max_steps=2, eval_strategy="no", save_strategy="no")
    config["training"].pop("load_best_model_at_end", None)
    config.update(samples=0)
    config["eval_suite"].update(limit=2, max_new_tokens=8)  # a random model says nothing parseable in 8 tokens
    (task / "task.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert run_gpurun(local_project, "train", "tasks/demo").returncode == 0
    followed = run_gpurun(local_project, "logs", "-f", timeout=600)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "eval suite: name 0.000 · args 0.000 · 0/2 replies held a call (base model without the adapter:" in (
        followed.stdout
    )
    assert "warning: eval suite: none of the 2 replies held a tool call" in followed.stdout
    (run_dir,) = (local_project.parent / "local-workdir" / "runs").iterdir()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    (suite,) = [e for e in events if e["kind"] == "eval_suite"]
    assert suite["mode"] == "tool_call" and suite["total"] == 2 and suite["parsed"] == 0
    assert suite["name_accuracy"] == suite["arguments_accuracy"] == suite["baseline_arguments_accuracy"] == 0.0
    assert "none of the 2 replies held a tool call" in suite["warning"]
    status = run_gpurun(local_project, "status")
    assert "name 0.000 · args 0.000 (base name 0.000 · args 0.000)" in status.stdout, status.stdout
