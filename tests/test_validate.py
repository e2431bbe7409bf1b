"""`gpurun validate`: token lengths, the mask preview, and templates that would train on the wrong tokens."""

import shutil

import yaml

from tests.conftest import run_gpurun
from trainer.builtin.tiny import CHAT_TEMPLATE, ensure_tiny


def test_validate_reports_lengths_and_shows_the_trained_tokens(local_project):
    result = run_gpurun(local_project, "validate", "tasks/demo", "--show", "1")
    assert result.returncode == 0, result.stderr
    assert "tokens per example: p50" in result.stdout and "would be truncated" in result.stdout
    assert "end-of-turn token <|im_end|>: trained" in result.stdout
    assert "--- example 1 (trained tokens highlighted) ---" in result.stdout


def with_template(project, tmp_path, template: str):
    """Point the demo task at a copy of the tiny model whose chat template is `template`."""
    model = tmp_path / "model-copy"
    shutil.copytree(ensure_tiny(), model)
    (model / "chat_template.jinja").write_text(template)
    task = project / "tasks" / "demo" / "task.yaml"
    config = yaml.safe_load(task.read_text())
    config["base_model"] = str(model)
    task.write_text(yaml.safe_dump(config))


def test_a_template_without_generation_markers_is_refused_clearly(local_project, tmp_path):
    plain = CHAT_TEMPLATE.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    with_template(local_project, tmp_path, plain)
    result = run_gpurun(local_project, "train", "tasks/demo")
    assert result.returncode == 1
    assert "Error: chat template: the chat template has no {% generation %} markers" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_end_of_turn_token_outside_the_mask_is_refused(local_project, tmp_path):
    moved = CHAT_TEMPLATE.replace(
        "{{ '<|im_end|>' }}{%- endgeneration -%}",
        "{%- endgeneration -%}{{ '<|im_end|>' }}",
    )
    assert moved != CHAT_TEMPLATE
    with_template(local_project, tmp_path, moved)
    result = run_gpurun(local_project, "validate", "tasks/demo")
    assert result.returncode == 1
    assert "end-of-turn token '<|im_end|>' is never trained" in result.stderr, result.stderr
