"""The CLI's surface: help is instant and light, every command has an example and is in the README."""

import subprocess
import sys

import click
import pytest

from launcher.cli import main
from tests.conftest import REPO

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "paramiko", "fabric", "accelerate", "bitsandbytes")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from launcher.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED:' + ' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Fine-tune LoRA adapters" in proc.stdout
    loaded = proc.stdout.strip().splitlines()[-1]
    assert loaded.startswith("LOADED:"), proc.stdout
    assert loaded == "LOADED:", f"gpurun --help loaded: {loaded}"


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_an_example_and_is_in_the_readme(name):
    command = main.commands[name]
    with click.Context(command, info_name=name) as ctx:
        text = command.get_help(ctx)
    assert "Example:" in text and f"gpurun {name}" in text, text
    assert f"gpurun {name}" in (REPO / "README.md").read_text(), f"README does not show gpurun {name}"
