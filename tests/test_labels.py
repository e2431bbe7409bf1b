"""The loss mask the trainer really uses: exactly the assistant turns, end-of-turn token included."""

import json

import pytest

from trainer.builtin.tiny import ensure_tiny
from trainer.task.loading import config_from_dict
from trainer.task.splits import load_task_data
from trainer.training.model import load_model, load_tokenizer
from trainer.training.recipes import build_trainer

MULTI_TURN = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "我还有几天年假？"},
    {"from": "gpt", "value": '{"name": "get_leave_balance"}'},
    {"from": "human", "value": "And sick leave?"},
    {"from": "gpt", "value": '{"name": "get_leave_balance", "arguments": {"leave_type": "sick"}}'},
]
CASES = {
    "messages": (
        {
            "messages": [
                {"role": "user", "content": "Show my payslip"},
                {"role": "assistant", "content": '{"name": "get_payslip"}'},
            ]
        },
        ['{"name": "get_payslip"}'],
    ),
    "alpaca": (
        {"instruction": "Route this request", "input": "update my address", "output": '{"name": "update_address"}'},
        ['{"name": "update_address"}'],
    ),
    "sharegpt": ({"conversations": MULTI_TURN}, [t["value"] for t in MULTI_TURN if t["from"] == "gpt"]),
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_labels_are_exactly_the_assistant_turns_and_their_end_of_turn(tmp_path, model_cache, fmt):
    row, answers = CASES[fmt]
    (tmp_path / "train.jsonl").write_text((json.dumps(row, ensure_ascii=False) + "\n") * 4)
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["train.jsonl"]}})
    splits = load_task_data(tmp_path, config)
    base = str(ensure_tiny())
    tokenizer = load_tokenizer(base)
    trainer = build_trainer(config, load_model(config, base), tokenizer, splits, tmp_path / "out", [])

    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained_runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            trained_runs.append(current)
            current = []
    if current:
        trained_runs.append(current)
    decoded = [tokenizer.decode(run) for run in trained_runs]
    assert decoded == [answer + "<|im_end|>" for answer in answers], decoded
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(run[-1] == eot for run in trained_runs)
    # Nothing else: every untrained token is outside the answers (prompt, roles, separators).
    assert sum(label != -100 for label in labels) == sum(len(run) for run in trained_runs)
