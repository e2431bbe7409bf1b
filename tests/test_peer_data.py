"""Real data that peers accept trains here too (issue 17, item 4): OpenAI's cookbook arguments encoded twice,
axolotl's tool calls without a `tools` list, and rows that max_length leaves nothing to train (dropped, said).

What stays refused: arguments that are not JSON at all, a call to a function missing from a `tools` list the row
has, and data.drop_long: false (or every row dropped) for rows beyond max_length.
"""

import json
from pathlib import Path

import pytest

from tests.conftest import run_gpurun
from trainer.task.loading import config_from_dict
from trainer.task.problems import TaskError
from trainer.task.splits import load_task_data

# Verbatim, from OpenAI's cookbook "Fine_tuning_for_function_calling" (the drone data): the arguments are a JSON
# string holding the object's JSON text, which OpenAI's fine-tuning accepts.
OPENAI_COOKBOOK_LINE = r"""{"messages": [{"role": "system", "content": "You are a helpful assistant that has access to functions."}, {"role": "user", "content": "Where are you right now?"}, {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {"name": "get_drone_location", "arguments": "\"{\\\"location\\\": \\\"current\\\"}\""}}]}], "tools": [{"type": "function", "function": {"name": "get_drone_location", "description": "Get the current location of the drone.", "parameters": {"type": "object", "properties": {}, "required": []}}}]}"""  # noqa: E501

# axolotl's `chat_template` dataset with tool calls (its docs' tool-use row), as rows may carry it: tool_calls
# (arguments an object), the tool's answer as a `tool` message with its `name`, and no `tools` list.
AXOLOTL_ROW = {
    "messages": [
        {"role": "user", "content": "What's the temperature in Paris right now?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_current_temperature", "arguments": {"location": "Paris, France"}},
                }
            ],
        },
        {"role": "tool", "name": "get_current_temperature", "content": "22.0"},
        {"role": "assistant", "content": "The current temperature in Paris is 22.0 degrees Celsius."},
    ]
}


def load(tmp_path: Path, lines: list[str], **data) -> tuple[dict, list[str]]:
    (tmp_path / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["train.jsonl"], **data}})
    notices: list[str] = []
    return load_task_data(tmp_path, config, notices=notices), notices


def refusal(tmp_path: Path, row: dict) -> str:
    with pytest.raises(TaskError) as info:
        load(tmp_path, [json.dumps(row)])
    (problem,) = [str(p) for p in info.value.problems]
    return problem


def test_the_cookbook_line_holds_its_arguments_as_a_json_string_of_json_text():
    raw = json.loads(OPENAI_COOKBOOK_LINE)["messages"][2]["tool_calls"][0]["function"]["arguments"]
    assert raw == '"{\\"location\\": \\"current\\"}"'  # the field's string: JSON of a string
    assert json.loads(raw) == '{"location": "current"}'  # decoded once: the object's JSON text
    assert json.loads(json.loads(raw)) == {"location": "current"}


def test_arguments_encoded_twice_are_decoded_with_one_notice_per_file(tmp_path):
    splits, notices = load(tmp_path, [OPENAI_COOKBOOK_LINE] * 3)
    call = splits["train"][0]["messages"][2]["tool_calls"][0]
    assert call == {
        "type": "function",
        "function": {"name": "get_drone_location", "arguments": {"location": "current"}},
        "id": "call_id",
    }
    assert notices == [
        f"{tmp_path}/train.jsonl: 3 line(s) (lines 1, 2, 3) give tool-call `arguments` as a JSON string holding "
        "the object's JSON text (as OpenAI's cookbook data does, and OpenAI accepts): decoded twice"
    ]


def test_arguments_that_are_not_json_or_a_string_of_no_object_stay_refused(tmp_path):
    row = json.loads(OPENAI_COOKBOOK_LINE)
    function = row["messages"][2]["tool_calls"][0]["function"]
    function["arguments"] = "location: current"
    assert refusal(tmp_path, row).endswith(
        "messages[2].tool_calls[0]: the arguments of 'get_drone_location' are not valid JSON: "
        "Expecting value (column 1)"
    )
    function["arguments"] = json.dumps("location: current")  # a JSON string, but of no JSON object
    assert refusal(tmp_path, row).endswith(
        "messages[2].tool_calls[0]: the arguments of 'get_drone_location' must be a JSON object, "
        "got a JSON string 'location: current'"
    )


def test_tool_calls_without_a_tools_list_are_read_with_a_notice(tmp_path):
    splits, notices = load(tmp_path, [json.dumps(AXOLOTL_ROW)] * 2)
    (first, _) = splits["train"]
    assert "tools" not in first
    assert first["messages"][1]["tool_calls"][0]["function"] == {
        "name": "get_current_temperature",
        "arguments": {"location": "Paris, France"},
    }
    assert first["messages"][2] == {"role": "tool", "content": "22.0", "name": "get_current_temperature"}
    assert notices == [
        f"{tmp_path}/train.jsonl: 2 line(s) (lines 1, 2) hold tool calls but no `tools` list: the prompts carry "
        "no function schemas (the model learns the calls without seeing the signatures)"
    ]


def test_a_call_missing_from_an_existing_tools_list_stays_refused(tmp_path):
    row = {**AXOLOTL_ROW, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}
    assert refusal(tmp_path, row).endswith(
        "messages[1].tool_calls[0]: calls 'get_current_temperature', which is not in `tools` (get_weather)"
    )


# --- rows of which max_length cuts off every trained token: dropped, said, absent from what trains ---


def chat(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


SHORT = [chat(f"Say hi, number {i}.", f"Hi {i}.") for i in range(6)]
LONG = chat("please " * 200, "Fine.")  # a prompt of hundreds of builtin:tiny tokens: past max_length 64


@pytest.fixture
def tokenizer(model_cache):
    from trainer.builtin.tiny import ensure_tiny
    from trainer.training.model import load_tokenizer

    return load_tokenizer(str(ensure_tiny()))


def short_config(**data):
    """max_length 64, the rows in file order."""
    raw = {"base_model": "builtin:tiny", "data": {"train": ["train.jsonl"], "shuffle": False, **data}}
    return config_from_dict({**raw, "training": {"max_length": 64}})


def places(splits: dict) -> list[str]:
    return [row["_where"] for row in splits["train"] + splits["eval"]]


def checked(tmp_path: Path, tokenizer, lines: list[str] | None, **data):
    """The host's token checks (what run.py calls) on `lines` (None: the file as it is), with max_length 64."""
    from trainer.training.tokencache import checked_tokens

    if lines is not None:
        (tmp_path / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    config = short_config(**data)
    splits = load_task_data(tmp_path, config)
    said: list[str] = []
    problems, tokenized = checked_tokens(config, tokenizer, splits, tmp_path, tmp_path / "cache", said.append)
    return problems, tokenized, splits, said


def test_rows_beyond_max_length_are_dropped_said_and_absent_from_what_trains(tmp_path, tokenizer):
    lines = [*SHORT[:2], LONG, *SHORT[2:4], LONG, *SHORT[4:]]
    problems, tokenized, splits, said = checked(tmp_path, tokenizer, lines, eval_split=0.25)
    assert problems == [] and not tokenized.reused
    assert said[0].startswith("tokens per example: p50") and said[0].endswith("; 2 dropped")
    notice = said[1]
    assert notice.startswith(
        f"2 example(s) dropped: every trained token lies beyond max_length 64 ({tmp_path}/train.jsonl lines 3, 6); "
        "max_length "
    )
    assert notice.endswith(" keeps them whole (data.drop_long: false refuses them instead)")
    assert sorted(where.rpartition(":")[2] for where in places(splits)) == ["1", "2", "4", "5", "7", "8"]
    assert (len(tokenized.train), len(tokenized.eval)) == (len(splits["train"]), len(splits["eval"])) == (4, 2)
    for example in [*tokenized.train, *tokenized.eval]:
        assert any(label != -100 for label in example["labels"])  # every row left trains on something

    problems, cached, again, said = checked(tmp_path, tokenizer, None, eval_split=0.25)  # the next run: the cache
    assert problems == [] and cached.reused and said[1] == notice
    assert places(again) == places(splits)


def test_drop_long_false_and_every_row_dropped_are_refused_as_before(tmp_path, tokenizer):
    problems, tokenized, _, _ = checked(tmp_path, tokenizer, [*SHORT, LONG], drop_long=False)
    assert tokenized is None
    assert [str(p) for p in problems] == [f"{tmp_path}/train.jsonl:7: every trained token lies beyond max_length 64"]

    problems, tokenized, _, _ = checked(tmp_path, tokenizer, [LONG, LONG])
    assert tokenized is None
    beyond = [f"{tmp_path}/train.jsonl:{n}: every trained token lies beyond max_length 64" for n in (1, 2)]
    assert [str(p) for p in problems][:2] == beyond


def test_the_token_report_leaves_them_out_of_the_tokens_it_hands_on(tmp_path, tokenizer):
    from trainer.training.tokencache import tokenize_rows
    from trainer.training.tokens import token_report

    (tmp_path / "train.jsonl").write_text("".join(line + "\n" for line in [SHORT[0], LONG, SHORT[1]]))
    config = short_config()
    rows = load_task_data(tmp_path, config)["train"]
    pairs: list = []
    report = token_report(rows, tokenizer, config, pairs=pairs)
    assert report.problems == [] and report.dropped == [1] and len(pairs) == 2
    assert report.truncated == 0 and report.summary(64).endswith("; 0 truncated at 64; 1 dropped")
    assert len(tokenize_rows(config, tokenizer, rows, 3).train) == 2  # without the checks: the same rows


def test_validate_says_what_it_drops_and_strict_refuses_it(local_project):
    with (local_project / "tasks" / "demo" / "data" / "train.jsonl").open("a") as fh:
        fh.write(chat("please " * 1500, "Fine.") + "\n")
    result = run_gpurun(local_project, "validate", "tasks/demo")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())  # (rich wraps long lines)
    assert "notice: 1 example(s) dropped: every trained token lies beyond max_length 768" in out, result.stdout
    assert "tasks/demo/data/train.jsonl line 321); max_length " in out, result.stdout

    strict = run_gpurun(local_project, "validate", "tasks/demo", "--strict")
    assert strict.returncode == 1
    assert "1 example(s) dropped: every trained token lies beyond max_length" in strict.stderr, strict.stderr
