"""Every common row shape is read, checked and trained as its home project trains it.

Each SFT shape is asserted on the trained tokens from the collator's real labels (as test_labels.py
does); each family also trains builtin:tiny for a few steps.
"""

import json

import pytest

from tests.test_recipes import events_of, train_recipe
from trainer.builtin.tiny import ensure_tiny
from trainer.task.loading import config_from_dict
from trainer.task.problems import TaskError
from trainer.task.splits import load_task_data
from trainer.training.model import load_model, load_tokenizer
from trainer.training.recipes import build_trainer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_leave_balance",
            "description": "Days of leave left",
            "parameters": {"type": "object", "properties": {"leave_type": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_payslip",
            "parameters": {"type": "object", "properties": {"month": {"type": "string"}}},
        },
    },
]
CALL = '<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call><|im_end|>'


def call(name: str, arguments: dict) -> str:
    return CALL.format(name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def openai_row(i: int) -> dict:
    """OpenAI's chat fine-tuning shape: tool_calls with null content, a tool turn, a weight-0 turn."""
    return {
        "messages": [
            {"role": "system", "content": "You route HR requests."},
            {"role": "user", "content": f"Leave left, question {i}?"},
            {"role": "assistant", "content": "Old answer, not to train.", "weight": 0},
            {"role": "user", "content": "Please check it."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_leave_balance", "arguments": '{"leave_type": "annual"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"days": 12}'},
            {"role": "assistant", "content": "You have 12 days."},
        ],
        "tools": TOOLS,
    }


OPENAI_TRAINED = [call("get_leave_balance", {"leave_type": "annual"}), "You have 12 days.<|im_end|>"]

# TRL / axolotl: tool_calls without the OpenAI "function" nesting... as TRL documents them, arguments an object.
TRL_TOOLS_ROW = {
    "messages": [
        {"role": "user", "content": "My payslip for May"},
        {
            "role": "assistant",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_payslip", "arguments": {"month": "2026-05"}}}
            ],
        },
        {"role": "tool", "name": "get_payslip", "content": "sent"},
        {"role": "assistant", "content": "Sent."},
    ],
    "tools": TOOLS,
}
TRL_TOOLS_TRAINED = [call("get_payslip", {"month": "2026-05"}), "Sent.<|im_end|>"]

# LLaMA-Factory's ShareGPT with tools: a JSON string of bare functions, function_call / observation turns.
SHAREGPT_TOOLS_ROW = {
    "system": "You route HR requests.",
    "tools": json.dumps([t["function"] for t in TOOLS]),
    "conversations": [
        {"from": "human", "value": "Sick leave left?"},
        {"from": "function_call", "value": '{"name": "get_leave_balance", "arguments": {"leave_type": "sick"}}'},
        {"from": "observation", "value": '{"days": 3}'},
        {"from": "gpt", "value": "3 days."},
        {"from": "human", "value": "Thanks"},
        {"from": "gpt", "value": "You're welcome."},
    ],
}
SHAREGPT_TOOLS_TRAINED = [
    call("get_leave_balance", {"leave_type": "sick"}),
    "3 days.<|im_end|>",
    "You're welcome.<|im_end|>",
]

ALPACA_ROW = {
    "system": "Be brief.",
    "history": [["Hi", "Hello."], ["Who are you?", "An HR bot."]],
    "instruction": "Route this",
    "input": "my payslip",
    "output": "get_payslip",
}
ALPACA_TRAINED = ["Hello.<|im_end|>", "An HR bot.<|im_end|>", "get_payslip<|im_end|>"]

SYSTEM_OPENER_ROW = {
    "messages": [
        {"role": "system", "content": "Greet first."},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Payslip"},
        {"role": "assistant", "content": "Here it is."},
    ]
}

CONVERSATIONAL_PC_ROW = {
    "prompt": [{"role": "system", "content": "Route."}, {"role": "user", "content": "Leave left?"}],
    "completion": [
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_leave_balance", "arguments": "{}"}}]},
    ],
    "tools": TOOLS,
}

CASES = {
    "openai_tools_weight": (openai_row(0), OPENAI_TRAINED),
    "trl_tools": (TRL_TOOLS_ROW, TRL_TOOLS_TRAINED),
    "sharegpt_tools_system": (SHAREGPT_TOOLS_ROW, SHAREGPT_TOOLS_TRAINED),
    "alpaca_system_history": (ALPACA_ROW, ALPACA_TRAINED),
    "system_assistant_opener": (SYSTEM_OPENER_ROW, ["Hello, how can I help?<|im_end|>", "Here it is.<|im_end|>"]),
    # As TRL trains it (completion-only loss): everything after the prompt, the template's closing newline too.
    "prompt_completion_conversational": (CONVERSATIONAL_PC_ROW, [call("get_leave_balance", {}) + "\n"]),
    "prompt_completion_standard": ({"prompt": "The sky is", "completion": " blue."}, [" blue.<|im_end|>"]),
    "language_modeling": ({"text": "Plain text."}, ["Plain text.<|im_end|>"]),
}


@pytest.fixture(scope="module")
def tiny(model_cache):
    base = str(ensure_tiny())
    return base, load_tokenizer(base)


def sft_trainer(tmp_path, rows, tiny, **data):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["train.jsonl"], **data}})
    splits = load_task_data(tmp_path, config)
    base, tokenizer = tiny
    return build_trainer(config, load_model(config, base), tokenizer, splits, tmp_path / "out", [])


def trained_runs(trainer, tokenizer, index: int = 0) -> list[str]:
    batch = trainer.data_collator([trainer.train_dataset[index]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("shape", sorted(CASES))
def test_each_row_shape_trains_exactly_its_answers_tool_calls_included(tmp_path, tiny, shape):
    row, expected = CASES[shape]
    trainer = sft_trainer(tmp_path, [row] * 3, tiny)
    assert trained_runs(trainer, tiny[1]) == expected


def test_tools_are_rendered_into_the_prompt_and_tool_results_are_not_trained(tmp_path, tiny):
    trainer = sft_trainer(tmp_path, [openai_row(0)] * 2, tiny)
    text = tiny[1].decode(trainer.train_dataset[0]["input_ids"])
    assert '<tools>\n{"type": "function", "function": {"name": "get_leave_balance"' in text
    assert '<|im_start|>user\n<tool_response>\n{"days": 12}\n</tool_response><|im_end|>' in text
    assert "Old answer, not to train." in text  # in the context, but weight 0 keeps it out of the labels


BAD_ROWS = {
    "unknown function": (
        {**TRL_TOOLS_ROW, "tools": TOOLS[:1]},
        "messages[1].tool_calls[0]: calls 'get_payslip', which is not in `tools` (get_leave_balance)",
    ),
    "arguments not JSON": (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "get_payslip", "arguments": '{"month": '}}]},
            ],
            "tools": TOOLS,
        },
        "messages[1].tool_calls[0]: the arguments of 'get_payslip' are not valid JSON: Expecting value (column 11)",
    ),
    "bad function_call": (
        {"tools": "[]", "conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "{"}]},
        "conversations[1]: the function call is not valid JSON",
    ),
    "tool without call": (
        {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]},
        "messages[1]: a tool result must follow an assistant turn with `tool_calls`",
    ),
    "all weight 0": (
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]},
        "every assistant turn in `messages` has weight 0: nothing to train on",
    ),
    "bad weight": (
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0.5}]},
        "messages[1]: `weight` must be 0 (not trained) or 1 (trained), got 0.5",
    ),
    "non-string system": (
        {"system": 3, "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
        "`system` must be a string, got int",
    ),
    "kto": (
        {"prompt": "x", "completion": "y", "label": True},
        "unpaired preference rows (prompt, completion, label: KTO's shape) are not supported",
    ),
    "prompt only": ({"prompt": "x"}, "a prompt-only row has no answer to train on"),
    "preference in sft": (
        {"prompt": "x", "chosen": "a", "rejected": "b"},
        "a preference row (`chosen`, `rejected`) needs task: dpo or orpo, not sft",
    ),
    "bad history": (
        {"instruction": "x", "output": "y", "history": [["only one"]]},
        "history[0] must be a pair of non-empty strings",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_of_every_shape_are_named_by_file_line_and_problem(tmp_path, case):
    row, message = BAD_ROWS[case]
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["train.jsonl"]}})
    with pytest.raises(TaskError) as info:
        load_task_data(tmp_path, config)
    (problem,) = [str(p) for p in info.value.problems]
    assert problem.startswith(f"{tmp_path}/train.jsonl:1: {message}"), problem


def test_a_column_no_format_reads_is_a_notice_naming_it_and_the_format(tmp_path):
    rows = [{**openai_row(i), "id": i, "source": "crm"} for i in range(2)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["train.jsonl"]}})
    notices: list[str] = []
    load_task_data(tmp_path, config, notices=notices)
    assert notices == [f"{tmp_path}/train.jsonl: column(s) `id`, `source` not used by the messages format: ignored"]


PREFERENCE = {
    "explicit_standard": {"prompt": "Route: my payslip.", "chosen": " get_payslip", "rejected": " no idea"},
    "implicit_standard": {"chosen": "Route: my payslip. get_payslip", "rejected": "Route: my payslip. no idea"},
    "explicit_conversational": {
        "prompt": [{"role": "user", "content": "Route: my payslip"}],
        "chosen": [{"role": "assistant", "content": "get_payslip"}],
        "rejected": [{"role": "assistant", "content": "no idea"}],
    },
    "implicit_conversational": {
        "chosen": [{"role": "user", "content": "Route: my payslip"}, {"role": "assistant", "content": "get_payslip"}],
        "rejected": [{"role": "user", "content": "Route: my payslip"}, {"role": "assistant", "content": "no idea"}],
    },
    "llama_factory": {
        "system": "Route.",
        "conversations": [{"from": "human", "value": "Route: my payslip"}],
        "chosen": {"from": "gpt", "value": "get_payslip"},
        "rejected": {"from": "gpt", "value": "no idea"},
    },
}
PREFERENCE_ANSWERS = {
    "explicit_standard": (" get_payslip", " no idea"),
    "implicit_standard": (" get_payslip", " no idea"),
}


@pytest.mark.parametrize("shape", sorted(PREFERENCE))
def test_every_preference_shape_becomes_an_explicit_pair(tmp_path, shape):
    (tmp_path / "train.jsonl").write_text(json.dumps(PREFERENCE[shape]) + "\n")
    config = config_from_dict({"base_model": "builtin:tiny", "task": "dpo", "data": {"train": ["train.jsonl"]}})
    (row,) = load_task_data(tmp_path, config)["train"]
    if shape in PREFERENCE_ANSWERS:
        assert (row["prompt"], row["chosen"], row["rejected"]) == ("Route: my payslip.", *PREFERENCE_ANSWERS[shape])
    else:
        assert row["prompt"][-1] == {"role": "user", "content": "Route: my payslip"}
        assert row["chosen"] == [{"role": "assistant", "content": "get_payslip"}]
        assert row["rejected"] == [{"role": "assistant", "content": "no idea"}]


@pytest.mark.parametrize(
    "shape", ["explicit_standard", "implicit_standard", "explicit_conversational", "implicit_conversational"]
)
def test_dpo_trains_on_the_chosen_answer_of_each_preference_shape(tmp_path, tiny, shape):
    (tmp_path / "train.jsonl").write_text((json.dumps(PREFERENCE[shape]) + "\n") * 2)
    config = config_from_dict({"base_model": "builtin:tiny", "task": "dpo", "data": {"train": ["train.jsonl"]}})
    splits = load_task_data(tmp_path, config)
    base, tokenizer = tiny
    trainer = build_trainer(config, load_model(config, base), tokenizer, splits, tmp_path / "out", [])
    example = trainer.train_dataset[0]
    chosen = tokenizer.decode(example["chosen_ids"] if "chosen_ids" in example else example["chosen_input_ids"])
    # TRL's own tokenization: a conversational answer keeps the template's closing newline.
    expected = "get_payslip<|im_end|>\n" if "conversational" in shape else " get_payslip<|im_end|>"
    assert chosen.endswith(expected), chosen


FAMILIES = {
    "sft_tools": ({}, [openai_row(i) for i in range(8)]),
    "sharegpt_tools": ({}, [SHAREGPT_TOOLS_ROW] * 8),
    "prompt_completion": ({}, [{"prompt": f"Q{i}: the sky is", "completion": " blue."} for i in range(8)]),
    "conversational": ({}, [CONVERSATIONAL_PC_ROW] * 8),
    "preference_explicit": ({"task": "dpo"}, [PREFERENCE["explicit_conversational"]] * 8),
    "preference_implicit": ({"task": "orpo"}, [PREFERENCE["implicit_standard"]] * 8),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_trains_builtin_tiny_for_real(tmp_path, model_cache, family):
    config, rows = FAMILIES[family]
    run_dir = train_recipe(
        tmp_path, {"data/train.jsonl": rows}, **config, training={"max_steps": 2, "max_length": 1024}
    )
    steps = [e for e in events_of(run_dir) if e["kind"] == "log" and "loss" in e]
    assert steps and all(e["loss"] == e["loss"] for e in steps)  # trained, and the loss is a number
