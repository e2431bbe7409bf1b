"""The task schema: coercion, old names, did-you-mean, every problem at once, overlays, --set."""

import pytest

from tests.conftest import REPO
from trainer.task.loading import config_from_dict, deep_merge, load_task
from trainer.task.problems import TaskError

BASE = {"base_model": "builtin:tiny", "data": {"train": ["data/train.jsonl"]}}


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(TaskError) as info:
        config_from_dict(raw)
    return [str(p) + " | " + p.hint for p in info.value.problems]


def test_yaml_exponent_strings_are_coerced():
    config = config_from_dict({**BASE, "training": {"learning_rate": "1e-5", "max_steps": "300"}})
    assert config.training.learning_rate == 1e-5 and config.training.max_steps == 300


def test_unknown_key_suggests_the_close_one():
    (problem,) = problems_of({**BASE, "training": {"lerning_rate": 1e-4}})
    assert "training.lerning_rate" in problem and "did you mean `learning_rate`" in problem


def test_every_problem_is_reported_at_once():
    problems = problems_of({**BASE, "training": {"learning_rate": "fast", "optim": "adamw"}, "lora": {"r": 0}})
    assert len(problems) == 3, problems


def test_old_names_are_translated_with_a_notice():
    notices: list[str] = []
    raw = {**BASE, "training": {"max_seq_length": 512, "evaluation_strategy": "no", "warmup_ratio": 0.1}}
    config = config_from_dict(raw, notices=notices)
    assert config.training.max_length == 512 and config.training.eval_strategy == "no"
    assert config.training.warmup_steps == 0.1
    assert len(notices) == 3


def test_lora_null_means_full_fine_tune():
    assert config_from_dict({**BASE, "lora": None}).lora is None


def test_overlay_merges_nested_and_replaces_lists():
    merged = deep_merge({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}})
    assert merged == {"a": {"b": 1, "c": [3]}}


def test_set_overrides_and_errors_name_the_set(tmp_path):
    (tmp_path / "task.yaml").write_text("base_model: builtin:tiny\ndata:\n  train: [x.jsonl]\n")
    assert load_task(tmp_path, overrides=["training.max_steps=7"]).training.max_steps == 7
    with pytest.raises(TaskError) as info:
        load_task(tmp_path, overrides=["training.max_stepz=7"])
    assert str(info.value.problems[0]).startswith("--set training.max_stepz")


def test_errors_point_at_the_yaml_line(tmp_path):
    (tmp_path / "task.yaml").write_text("base_model: builtin:tiny\ndata:\n  train: [x.jsonl]\n  fromat: auto\n")
    with pytest.raises(TaskError) as info:
        load_task(tmp_path)
    assert str(info.value.problems[0]).startswith(f"{tmp_path}/task.yaml:4: data.fromat")


@pytest.mark.parametrize("task_yaml", sorted(REPO.glob("tasks/*/task.yaml")), ids=lambda p: p.parent.name)
def test_every_shipped_task_validates(task_yaml):
    from launcher.checks import check_task

    checked = check_task(task_yaml.parent)
    assert checked.counts["train"] >= 300 * 0.8


def test_seed_000_orpo_config_is_understood():
    notices: list[str] = []
    config = config_from_dict({**BASE, "method": "orpo", "orpo": {"beta": 0.2}}, notices=notices)
    assert config.task == "orpo" and config.preference.beta == 0.2 and len(notices) == 2


def test_seed_000_qlora_block_and_top_level_load_in_4bit():
    raw = {**BASE, "load_in_4bit": True, "quantization": {"bnb_4bit_quant_type": "nf4"}}
    config = config_from_dict(raw, notices=[])
    assert config.quantization.load_in_4bit and config.quantization.bnb_4bit_quant_type == "nf4"


@pytest.mark.parametrize("experiment", sorted(REPO.glob("tasks/*/experiments/*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_experiment_validates(experiment):
    from launcher.checks import check_task

    check_task(experiment.parent.parent, experiment=experiment.stem)
