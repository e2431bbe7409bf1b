"""Models that do not fit on one GPU: task.yaml's `distributed: {strategy: ddp | fsdp | deepspeed}`.

What is checked here is what a CPU-only machine can show: the schema refuses what could not run, the
TrainingArguments gpurun builds for each strategy are transformers' own FSDP2 / DeepSpeed settings (with the
decoder layer class of the real model and QLoRA's storage dtype), and a host without CUDA, or without deepspeed,
refuses the run at its start with an error and a hint instead of quietly training plain DDP.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_gpurun
from tests.readme import readme_blocks
from tests.test_lifecycle import wait_for
from trainer.task.loading import load_task
from trainer.task.problems import TaskError

ZERO3 = {
    "bf16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "overlap_comm": True, "stage3_gather_16bit_weights_on_model_save": True},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
}


@pytest.fixture
def task(tmp_path) -> Path:
    folder = tmp_path / "demo"
    shutil.copytree(REPO / "tasks" / "demo", folder, ignore=shutil.ignore_patterns("runs"))
    return folder


def with_distributed(task: Path, distributed: dict, **top) -> Path:
    config = yaml.safe_load((task / "task.yaml").read_text())
    config["distributed"] = distributed
    config.update(top)
    (task / "task.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return task


def problems_of(task: Path) -> list[str]:
    with pytest.raises(TaskError) as caught:
        load_task(task)
    return [f"{p} | {p.hint}" for p in caught.value.problems]


def test_strategy_defaults_to_ddp_and_a_deepspeed_json_in_the_task_folder_is_accepted(task):
    assert load_task(task).distributed.strategy == "ddp"
    (task / "ds_zero3.json").write_text(json.dumps(ZERO3))
    config = load_task(with_distributed(task, {"strategy": "deepspeed", "deepspeed": "ds_zero3.json"}))
    assert (config.distributed.strategy, config.distributed.deepspeed) == ("deepspeed", "ds_zero3.json")


BAD = [
    ("a misspelt strategy", {"strategy": "fdsp"}, None, "distributed.strategy: 'fdsp' is not allowed", "`fsdp`"),
    ("a misspelt key", {"stratgy": "fsdp"}, None, "distributed.stratgy: unknown key", "did you mean `strategy`?"),
    (
        "deepspeed without its config",
        {"strategy": "deepspeed"},
        None,
        "distributed.deepspeed: strategy deepspeed needs a DeepSpeed config",
        "distributed: {strategy: deepspeed, deepspeed: ds_zero3.json}",
    ),
    (
        "a DeepSpeed config that is not there",
        {"strategy": "deepspeed", "deepspeed": "ds_zero3.json"},
        None,
        "distributed.deepspeed: ds_zero3.json: no such file in",
        "see README: Models that do not fit on one GPU",
    ),
    (
        "a DeepSpeed config that is not JSON",
        {"strategy": "deepspeed", "deepspeed": "ds.json"},
        "{'zero_optimization': 3",
        "distributed.deepspeed: ds.json is not valid JSON: Expecting property name",
        "fix the JSON",
    ),
    (
        "a DeepSpeed config that is a list",
        {"strategy": "deepspeed", "deepspeed": "ds.json"},
        "[1, 2]",
        "distributed.deepspeed: ds.json must be a JSON object",
        "zero_optimization",
    ),
    (
        "a ZeRO stage that does not exist",
        {"strategy": "deepspeed", "deepspeed": "ds.json"},
        '{"zero_optimization": {"stage": 4}}',
        "distributed.deepspeed: ds.json: zero_optimization.stage must be 0, 1, 2 or 3, got 4",
        "ZeRO-3",
    ),
    (
        "a DeepSpeed config outside the task folder",
        {"strategy": "deepspeed", "deepspeed": "../ds.json"},
        None,
        "distributed.deepspeed: ../ds.json is outside the task folder",
        "move the JSON into the task folder",
    ),
    (
        "a DeepSpeed config with another strategy",
        {"strategy": "fsdp", "deepspeed": "ds.json"},
        "{}",
        "distributed.deepspeed: a DeepSpeed config is only used with strategy deepspeed (strategy is fsdp)",
        "set distributed.strategy: deepspeed",
    ),
]


@pytest.mark.parametrize(("case", "distributed", "ds_json", "message", "hint"), BAD, ids=[b[0] for b in BAD])
def test_validate_refuses_a_distributed_section_that_could_not_run(task, case, distributed, ds_json, message, hint):
    if ds_json is not None:
        (task / "ds.json").write_text(ds_json)
    (task.parent / "ds.json").write_text("{}")  # outside the folder: refused even though it exists
    found = problems_of(with_distributed(task, distributed))
    assert len(found) == 1 and message in found[0] and hint in found[0].split(" | ")[1], found
    assert "task.yaml:" in found[0], "the problem names the line in task.yaml"


def test_fsdp_refuses_8bit_weights_which_it_cannot_shard(task):
    found = problems_of(with_distributed(task, {"strategy": "fsdp"}, quantization={"load_in_8bit": True}))
    assert len(found) == 1, found
    assert found[0].endswith(
        "quantization.load_in_8bit: FSDP cannot shard 8-bit weights | use quantization.load_in_4bit (QLoRA)"
    )


def test_gpurun_validate_names_a_missing_deepspeed_config_with_a_hint(local_project):
    with_distributed(local_project / "tasks" / "demo", {"strategy": "deepspeed", "deepspeed": "ds_zero3.json"})
    checked = run_gpurun(local_project, "validate", "tasks/demo")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "Error: tasks/demo/task.yaml:" in checked.stderr and "ds_zero3.json: no such file in" in checked.stderr
    assert "Hint: see README: Models that do not fit on one GPU" in checked.stderr
    assert "Traceback" not in checked.stderr


def training_args(task: Path, model_cache: Path, **distributed):
    """The TrainingArguments gpurun builds for the task, with the real builtin:tiny model (Qwen2)."""
    from trainer.training.model import load_model, resolve_base_model
    from trainer.training.recipes import common_args, distributed_args

    config = load_task(with_distributed(task, distributed)) if distributed else load_task(task)
    model = load_model(config, resolve_base_model(config, cache_dir=model_cache))
    kwargs = common_args(config, task / "output", has_eval=True)
    kwargs.update(distributed_args(config, model, task))
    return kwargs, config


def test_fsdp_is_transformers_fsdp2_full_shard_wrapping_each_decoder_layer(task, model_cache):
    from transformers import TrainingArguments

    config = yaml.safe_load((task / "task.yaml").read_text())
    config["training"]["gradient_checkpointing"] = True
    (task / "task.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    kwargs, _ = training_args(task, model_cache, strategy="fsdp")
    args = TrainingArguments(**kwargs)
    assert args.fsdp is True
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["transformer_cls_names_to_wrap"] == "Qwen2DecoderLayer"  # builtin:tiny's decoder layer
    assert plugin["reshard_after_forward"] is True  # full shard
    assert plugin["state_dict_type"] == "FULL_STATE_DICT"
    # Checkpointing asked for goes through FSDP's own, not the Trainer's (which would all-gather twice).
    assert plugin["activation_checkpointing"] is True
    assert args.activation_checkpointing is False


def test_ddp_leaves_fsdp_and_deepspeed_off(task, model_cache):
    from transformers import TrainingArguments

    kwargs, _ = training_args(task, model_cache)
    assert "fsdp" not in kwargs and "deepspeed" not in kwargs
    args = TrainingArguments(**kwargs)
    assert not args.fsdp and args.fsdp_plugin_args is None and args.deepspeed is None


def test_deepspeed_passes_the_task_folders_json_through(task, model_cache):
    (task / "ds_zero3.json").write_text(json.dumps(ZERO3))
    kwargs, _ = training_args(task, model_cache, strategy="deepspeed", deepspeed="ds_zero3.json")
    assert kwargs["deepspeed"] == str(task / "ds_zero3.json")
    assert "fsdp" not in kwargs
    assert json.loads(Path(kwargs["deepspeed"]).read_text()) == ZERO3


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_qlora_stores_its_4bit_weights_in_the_compute_dtype_when_the_weights_are_sharded(task, strategy):
    import torch

    from trainer.training.model import quantization_config

    (task / "ds.json").write_text("{}")
    distributed = {"strategy": strategy, **({"deepspeed": "ds.json"} if strategy == "deepspeed" else {})}
    qlora = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float16"}
    sharded = load_task(with_distributed(task, distributed, quantization=qlora))
    assert quantization_config(sharded).bnb_4bit_quant_storage == torch.float16
    whole = load_task(with_distributed(task, {"strategy": "ddp"}, quantization=qlora))
    assert quantization_config(whole).bnb_4bit_quant_storage == torch.uint8  # bitsandbytes' own default


def run_refused(project: Path, *sets: str) -> tuple[str, list[dict], Path]:
    """Train the demo on the local host with these overrides; the run's log (as `logs -f` shows it), events, dir."""
    train = run_gpurun(project, "train", "tasks/demo", *[arg for s in sets for arg in ("--set", s)])
    assert train.returncode == 0, train.stdout + train.stderr
    logs = run_gpurun(project, "logs", "-f")
    assert logs.returncode == 1, logs.stdout + logs.stderr
    assert "Traceback" not in logs.stdout + logs.stderr
    run_dirs = list((project.parent / "local-workdir" / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    events = [json.loads(line) for line in (run_dirs[0] / "events.jsonl").read_text().splitlines()]
    wait_for(lambda: "failed" in run_gpurun(project, "status").stdout, what="the run's failed state")
    return logs.stdout, events, run_dirs[0]


def test_fsdp_on_a_host_without_cuda_is_refused_at_start_instead_of_training_plain_ddp(local_project):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for hosts without it")
    log, events, run_dir = run_refused(local_project, "distributed.strategy=fsdp")
    message = (
        "strategy fsdp needs CUDA GPUs and this host has none: transformers would quietly train plain DDP instead, "
        "every process holding the whole model"
    )
    hint = "train on a host with NVIDIA GPUs, or remove distributed.strategy (ddp) to train on this one"
    assert f"error: {message}\nhint: {hint}" in log, log
    errors = [e for e in events if e["kind"] == "error"]
    assert len(errors) == 1 and errors[0]["message"] == message and errors[0]["hint"] == hint, errors
    assert not any(e["kind"] in ("train_begin", "log", "save", "done") for e in events), events
    assert "base model:" not in log, "refused before the model loads"
    assert not (run_dir / "output").exists() or not any((run_dir / "output").iterdir())


def test_deepspeed_not_installed_on_the_host_is_the_runs_error_before_the_first_step(local_project):
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here: the error is for hosts without it")
    (local_project / "tasks" / "demo" / "ds_zero3.json").write_text(json.dumps(ZERO3))
    log, events, _ = run_refused(local_project, "distributed.strategy=deepspeed", "distributed.deepspeed=ds_zero3.json")
    message = "deepspeed is not installed on this host; strategy deepspeed needs it"
    hint = "pip install deepspeed into the host's Python, or use strategy: fsdp"
    assert f"error: {message}\nhint: {hint}" in log, log
    errors = [e for e in events if e["kind"] == "error"]
    assert len(errors) == 1 and errors[0]["message"] == message and errors[0]["hint"] == hint, errors
    assert message in errors[0]["problems"]
    import torch

    if not torch.cuda.is_available():  # both problems at once, the CPU's with its own hint
        assert "error: strategy deepspeed needs CUDA GPUs and this host has none\nhint: train on a host" in log, log
    assert not any(e["kind"] in ("train_begin", "log", "save", "done") for e in events), events


def test_the_readmes_lines_to_copy_validate_and_its_refusal_is_the_hosts(task):
    import torch

    from trainer.training.recipes import host_problems

    fsdp_lines, deepspeed_lines, ds_json, refusal = (
        b.rstrip("\n") for b in readme_blocks("## Models that do not fit on one GPU")
    )
    base = yaml.safe_load((task / "task.yaml").read_text())
    (task / "task.yaml").write_text(yaml.safe_dump({**base, **yaml.safe_load(fsdp_lines)}, sort_keys=False))
    fsdp = load_task(task)
    assert fsdp.distributed.strategy == "fsdp" and fsdp.quantization.load_in_4bit
    (task / "ds_zero3.json").write_text(ds_json)
    assert json.loads(ds_json)["zero_optimization"]["stage"] == 3
    (task / "task.yaml").write_text(yaml.safe_dump({**base, **yaml.safe_load(deepspeed_lines)}, sort_keys=False))
    assert load_task(task).distributed.deepspeed == "ds_zero3.json"
    if not torch.cuda.is_available():
        shown = "\n".join(f"error: {p}\nhint: {p.hint}" for p in host_problems(fsdp, task))
        assert shown == refusal
