"""What validate promises is what the host gets: every value the trainer would reject is refused on the
laptop, before a push; a data file task.yaml names reaches the host as content, ignored or symlinked."""

import warnings

import pytest

from tests.conftest import run_gpurun
from tests.test_bad_tasks import edit_config
from trainer.builtin.tiny import tiny_module_names
from trainer.task.loading import config_from_dict
from trainer.task.schema import SCHEDULER_KWARGS


def raw_line(old_start: str, new: str):
    """Replace the task.yaml line that starts with `old_start` (after its indentation) by `new`, same indent."""

    def mutate(task):
        lines = (task / "task.yaml").read_text().splitlines()
        i = next(n for n, line in enumerate(lines) if line.strip().startswith(old_start))
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines[i] = indent + new
        (task / "task.yaml").write_text("\n".join(lines) + "\n")

    return mutate


def duplicate_line(start: str):
    def mutate(task):
        lines = (task / "task.yaml").read_text().splitlines()
        i = next(n for n, line in enumerate(lines) if line.strip().startswith(start))
        lines.insert(i + 1, lines[i])
        (task / "task.yaml").write_text("\n".join(lines) + "\n")

    return mutate


def eval_file_outside(task):
    (task.parent / "shared").mkdir()
    (task.parent / "shared" / "eval.jsonl").write_text((task / "data" / "eval.jsonl").read_text())
    edit_config(data__eval=["../shared/eval.jsonl"])(task)


CASES = [
    (
        "scheduler kwargs the scheduler does not take",
        edit_config(training__lr_scheduler_type="cosine", training__lr_scheduler_kwargs={"num_cycle": 2}),
        "training.lr_scheduler_kwargs.num_cycle: cosine does not take `num_cycle`",
        "did you mean `num_cycles`?",
    ),
    (
        "scheduler kwargs a constant scheduler would ignore",
        edit_config(training__lr_scheduler_type="constant", training__lr_scheduler_kwargs={"min_lr": 0.1}),
        "training.lr_scheduler_kwargs.min_lr: constant takes no arguments",
        "remove lr_scheduler_kwargs",
    ),
    (
        "warmup_stable_decay by epochs without its decay steps",
        edit_config(training__lr_scheduler_type="warmup_stable_decay", training__max_steps=None),
        "warmup_stable_decay needs num_decay_steps",
        "num_decay_steps",
    ),
    (
        "early stopping without saving",
        edit_config(early_stopping={"patience": 2}, training__save_strategy="no"),
        "early_stopping: needs a checkpoint at every evaluation, but save_strategy is 'no'",
        "set training.save_strategy: steps",
    ),
    (
        "best model at end with checkpoints off the evaluation steps",
        edit_config(training__load_best_model_at_end=True, training__save_steps=5, training__eval_steps=3),
        "training.load_best_model_at_end: needs save_steps (5) to be a multiple of eval_steps (3)",
        "save_steps: 6",
    ),
    (
        "a target module the model does not have",
        edit_config(lora__target_modules=["q_proj", "qkv_proj"]),
        "lora.target_modules: builtin:tiny has no module 'qkv_proj'",
        "its layers: down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
    ),
    ("seed -1", edit_config(training__seed=-1), "training.seed: must be in [0, 4294967295], got -1", "seed: 42"),
    ("warmup_steps -5", edit_config(training__warmup_steps=-5), "training.warmup_steps: must be >= 0, got -5", "0"),
    (
        "learning_rate .nan",
        raw_line("learning_rate:", "learning_rate: .nan"),
        "training.learning_rate: must be a finite number",
        "2e-4",
    ),
    (
        "a data file outside the task folder",
        eval_file_outside,
        "data.eval: ../shared/eval.jsonl is outside the task folder, and only the task folder is pushed",
        "move or copy the file into the task folder",
    ),
    (
        "a key written twice",
        duplicate_line("max_steps:"),
        "`training.max_steps` appears twice (first on line",
        "YAML would keep only the last",
    ),
]


@pytest.mark.parametrize("case, mutate, expected, hint", CASES, ids=[c[0] for c in CASES])
def test_what_the_trainer_would_reject_is_refused_before_a_push(
    ssh_project, host_workdir, case, mutate, expected, hint
):
    mutate(ssh_project / "tasks" / "hr")
    result = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    hints = [line for line in result.stderr.splitlines() if line.startswith("Hint:")]
    assert result.returncode == 1, (case, result.stdout, result.stderr)
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert len(hints) == 1 and hint in hints[0], result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert not (host_workdir / "tasks").exists() and not (host_workdir / "runs").exists(), "something reached the host"


def test_named_data_files_reach_the_host_as_content_when_ignored_or_symlinked(ssh_project, host_workdir):
    task = ssh_project / "tasks" / "hr"
    shared = ssh_project / "shared"
    (shared / "suite").mkdir(parents=True)
    # train.jsonl: a symlink to a file outside the task; the test file: inside a symlinked folder
    (task / "data" / "train.jsonl").rename(shared / "train.jsonl")
    (task / "data" / "train.jsonl").symlink_to(shared / "train.jsonl")
    (task / "data" / "test.jsonl").rename(shared / "suite" / "test.jsonl")
    (task / "suite").symlink_to(shared / "suite")
    edit_config(data__test=["suite/test.jsonl"], eval_suite__file="suite/test.jsonl")(task)
    # eval.jsonl: gitignored with its whole folder, beside a big file that must stay behind
    (task / "data" / "raw.bin").write_bytes(b"\0" * 2_000_000)
    (task / ".gitignore").write_text("data/\n")
    pushed = run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a100")
    assert pushed.returncode == 0, pushed.stderr
    mirror = host_workdir / "tasks" / "hr"
    for name, source in (
        ("data/train.jsonl", shared / "train.jsonl"),
        ("data/eval.jsonl", task / "data" / "eval.jsonl"),
        ("suite/test.jsonl", shared / "suite" / "test.jsonl"),
    ):
        assert not (mirror / name).is_symlink() and (mirror / name).read_bytes() == source.read_bytes(), name
    assert not (mirror / "data" / "raw.bin").exists(), "the ignore rules still hold for files task.yaml does not name"
    assert "not sent (ignore rules): data/raw.bin" in pushed.stdout
    assert run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a100").returncode == 0  # again: nothing breaks
    assert not (mirror / "data" / "train.jsonl").is_symlink()
    trained = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100")
    assert trained.returncode == 0, trained.stderr
    followed = run_gpurun(ssh_project, "logs", "-f")
    assert followed.returncode == 0, followed.stdout[-2000:]


def test_validate_strict_fails_on_a_warning_and_passes_a_clean_task(local_project):
    clean = run_gpurun(local_project, "validate", "tasks/demo", "--strict")  # the shipped demo has no warning
    assert clean.returncode == 0, clean.stdout + clean.stderr
    renamed = run_gpurun(local_project, "validate", "tasks/demo", "--strict", "--set", "training.max_seq_length=1280")
    assert renamed.returncode == 1, renamed.stdout
    assert "Error: --strict: 1 warning(s)" in renamed.stderr
    assert "`training.max_seq_length` is now `training.max_length`" in renamed.stderr
    relaxed = run_gpurun(local_project, "validate", "tasks/demo", "--set", "training.max_seq_length=1280")
    assert relaxed.returncode == 0


def test_the_scheduler_table_is_what_transformers_and_torch_take():
    import inspect

    import torch
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    filled_by_the_trainer = {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch", "kwargs"}
    for name, accepted in SCHEDULER_KWARGS.items():
        if name in ("constant", "constant_with_warmup"):
            expected = set()  # get_scheduler passes these no kwargs at all
        elif name == "reduce_lr_on_plateau":
            expected = set(inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau).parameters) - {"optimizer"}
        else:
            function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
            expected = set(inspect.signature(function).parameters) - filled_by_the_trainer
            if name == "warmup_stable_decay":
                expected.discard("num_stable_steps")  # excluded by num_training_steps, which the Trainer passes
        assert set(accepted) == expected, name


def test_builtin_tiny_module_names_are_the_models(model_cache):
    from trainer.builtin.tiny import ensure_tiny
    from trainer.training.validate import adaptable_module_names

    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["data/train.jsonl"]}})
    assert sorted(adaptable_module_names(config, str(ensure_tiny()))) == sorted(tiny_module_names())


@pytest.mark.parametrize("checkpointing", [True, False])
def test_training_arguments_use_the_current_checkpointing_name_without_a_future_warning(tmp_path, checkpointing):
    from trl import SFTConfig

    from trainer.training.recipes import common_args

    config = config_from_dict(
        {
            "base_model": "builtin:tiny",
            "data": {"train": ["t.jsonl"]},
            "training": {"gradient_checkpointing": checkpointing},
        }
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = SFTConfig(**common_args(config, tmp_path, has_eval=False), max_length=64)
    assert args.activation_checkpointing is checkpointing and args.gradient_checkpointing is checkpointing
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]


def test_a_target_module_check_reads_a_local_models_config(tmp_path, model_cache):
    """A local model is checked from its config.json alone (the token checks' subprocess does this on the laptop)."""
    from trainer.builtin.tiny import ensure_tiny
    from trainer.training.validate import module_problems

    config = config_from_dict(
        {
            "base_model": str(ensure_tiny()),
            "data": {"train": ["t.jsonl"]},
            "lora": {"target_modules": ["self_attn.q_proj", "mlp.up_proj", "attn.c_proj"]},
        }
    )
    problems = module_problems(config, config.base_model)
    assert [str(p) for p in problems] == [f"lora.target_modules: {config.base_model} has no module 'attn.c_proj'"]
