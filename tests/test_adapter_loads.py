"""A pulled adapter loads on the laptop with AutoPeftModelForCausalLM, as the README shows.

The adapter names its base as the user named it: the hub id, the path, or for builtin:tiny the folder
`python -m trainer.tiny` builds, never the cache folder the host loaded it from.
"""

import json
import os
import subprocess
import sys

from tests.conftest import REPO, run_gpurun
from tests.test_loop_ssh import latest_run_dir
from trainer.builtin.tiny import LOCAL_TINY_DIR
from trainer.task.loading import config_from_dict
from trainer.training.model import adapter_base_name, name_the_base

# The README's lines, run in a fresh process: its own HOME and no GPURUN_CACHE, so the host's cache
# (the folder the host loaded builtin:tiny from) cannot be found, and no network either.
LOAD_ON_THE_LAPTOP = """
import sys
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
inputs = tokenizer.apply_chat_template(
    [{"role": "user", "content": "How many vacation days do I have left?"}],
    add_generation_prompt=True, return_tensors="pt", return_dict=True,
)
out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
print("new tokens:", out.shape[1] - inputs["input_ids"].shape[1])
"""


def laptop_env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GPURUN_CACHE", "HF_HOME")}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return env


def test_a_pulled_builtin_tiny_adapter_loads_with_auto_peft_where_the_host_cache_does_not_exist(
    ssh_project, model_cache, tmp_path
):
    assert run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100").returncode == 0
    assert run_gpurun(ssh_project, "logs", "-f").returncode == 0
    pull = run_gpurun(ssh_project, "pull", "--checkpoints")
    assert pull.returncode == 0, pull.stderr
    pulled = latest_run_dir(ssh_project, "hr")
    for config_file in [pulled / "adapter_config.json", *pulled.glob("checkpoint-*/adapter_config.json")]:
        text = config_file.read_text()
        assert json.loads(text)["base_model_name_or_path"] == LOCAL_TINY_DIR, config_file
        assert str(model_cache) not in text, f"{config_file} names the host's cache"

    home, here = tmp_path / "laptop-home", tmp_path / "laptop-cwd"
    home.mkdir()
    here.mkdir()
    env = laptop_env(home)
    load = [sys.executable, "-c", LOAD_ON_THE_LAPTOP, str(pulled)]
    before = subprocess.run(load, cwd=here, env=env, capture_output=True, text=True, timeout=300)
    assert before.returncode != 0, "loaded without building the base: the test could not tell a host path"

    build = subprocess.run(
        [sys.executable, "-m", "trainer.tiny"], cwd=here, env=env, capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, build.stderr
    assert f"builtin:tiny is in {here / LOCAL_TINY_DIR}" in build.stdout
    loaded = subprocess.run(load, cwd=here, env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout.split("new tokens:")[1]) > 0, loaded.stdout
    # The rebuilt base is the host's, byte for byte: the adapter sits on the weights it was trained on.
    built, hosts = here / LOCAL_TINY_DIR, model_cache / "models" / LOCAL_TINY_DIR
    assert (built / "model.safetensors").read_bytes() == (hosts / "model.safetensors").read_bytes()


def test_an_adapter_names_the_base_as_the_task_names_it():
    def named(base_model: str) -> str:
        return adapter_base_name(config_from_dict({"base_model": base_model, "data": {"train": ["t.jsonl"]}}))

    assert named("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    assert named("/data/models/qwen3") == "/data/models/qwen3"
    assert named("builtin:tiny") == LOCAL_TINY_DIR


def test_a_saved_adapter_config_is_rewritten_to_the_name_and_nothing_else_changes(tmp_path):
    config = config_from_dict({"base_model": "builtin:tiny", "data": {"train": ["t.jsonl"]}})
    saved = {"base_model_name_or_path": f"/box/cache/models/{LOCAL_TINY_DIR}", "r": 16, "peft_type": "LORA"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    name_the_base(tmp_path, config)
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == {
        **saved,
        "base_model_name_or_path": LOCAL_TINY_DIR,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["adapter_config.json"], "a staging file was left behind"
    name_the_base(tmp_path / "no-adapter-here", config)  # a full fine-tune has no adapter_config.json
