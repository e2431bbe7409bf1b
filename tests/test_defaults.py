"""gpurun's training defaults are transformers 5's and TRL's, decided for the machine the run is on.

optim: transformers 5's default (fused AdamW, with torch >= 2.8) on a GPU and on the CPU alike. bf16 and
activation checkpointing: on with a GPU, as TRL's configs default them; off on the CPU. A value the task sets wins.
"""

import pytest
import torch

from trainer.task.loading import config_from_dict
from trainer.training.recipes import common_args, on_this_machine

TASK = {"base_model": "builtin:tiny", "data": {"train": ["t.jsonl"]}}


def task(**training):
    return config_from_dict({**TASK, "training": training})


@pytest.fixture
def a_gpu(monkeypatch):
    """What the trainer sees on a host with a bf16-capable GPU (the GPU itself is not touched by these checks)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_the_defaults_are_the_installed_libraries_own():
    """If transformers or TRL change a default, this says so, and the README's Defaults paragraph needs a look."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    ours = task().training
    assert ours.optim == TrainingArguments.__dataclass_fields__["optim"].default == "adamw_torch_fused"
    assert SFTConfig.__dataclass_fields__["gradient_checkpointing"].default is True  # on with a GPU, as ours
    assert SFTConfig.__dataclass_fields__["bf16"].default is None  # TRL: on unless fp16; ours, on a GPU with bf16
    assert ours.bf16 is None and ours.gradient_checkpointing is None  # unset: decided on the host


def test_on_the_cpu_training_uses_fused_adamw_in_fp32_without_checkpointing(tmp_path):
    from trl import SFTConfig

    assert not torch.cuda.is_available()  # this machine
    args = SFTConfig(**common_args(task(), tmp_path, has_eval=False), max_length=64)
    assert args.optim == "adamw_torch_fused"
    assert args.bf16 is False and args.fp16 is False
    assert args.activation_checkpointing is False and args.use_cpu is True


def test_the_cpu_really_builds_a_fused_adamw_and_steps_it(tmp_path, model_cache):
    """Fused AdamW on the CPU (torch >= 2.4) is what the trainer creates here, and it takes a step."""
    import json

    from trainer.builtin.tiny import ensure_tiny
    from trainer.task.splits import load_task_data
    from trainer.training.model import load_model, load_tokenizer
    from trainer.training.recipes import build_trainer

    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    config = task(max_steps=1, per_device_train_batch_size=1, save_strategy="no", eval_strategy="no")
    base = str(ensure_tiny())
    trainer = build_trainer(
        config, load_model(config, base), load_tokenizer(base), load_task_data(tmp_path, config), tmp_path / "o", []
    )
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, torch.optim.AdamW)
    assert trainer.optimizer.optimizer.defaults["fused"] is True
    assert trainer.state.global_step == 1


def test_on_a_gpu_training_uses_fused_adamw_bf16_and_checkpointing_as_trl_does(tmp_path, a_gpu):
    args = common_args(task(), tmp_path, has_eval=False)
    assert args["optim"] == "adamw_torch_fused"
    assert args["bf16"] is True and args["fp16"] is False
    assert args["activation_checkpointing"] is True
    assert args["activation_checkpointing_kwargs"] == {"use_reentrant": False}  # reentrant breaks DDP
    assert args["use_cpu"] is False


def test_a_gpu_without_bf16_or_a_task_with_fp16_gets_no_bf16(monkeypatch, a_gpu):
    assert on_this_machine(task(fp16=True)).training.bf16 is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a V100, a T4
    assert on_this_machine(task()).training.bf16 is False


@pytest.mark.parametrize("gpu", [False, True])
def test_what_the_task_sets_wins_over_the_machine(monkeypatch, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    set_on = on_this_machine(task(bf16=True, gradient_checkpointing=True, optim="adamw_torch")).training
    set_off = on_this_machine(task(bf16=False, gradient_checkpointing=False)).training
    assert (set_on.bf16, set_on.gradient_checkpointing, set_on.optim) == (True, True, "adamw_torch")
    assert (set_off.bf16, set_off.gradient_checkpointing) == (False, False)


def test_the_host_says_what_it_decided_in_train_log(tmp_path, model_cache, capsys):
    from tests.test_recipes import CHAT, train_recipe

    train_recipe(tmp_path, {"train.jsonl": CHAT}, samples=0, training={"max_steps": 1})
    assert "bf16: off, gradient checkpointing: off" in capsys.readouterr().out
