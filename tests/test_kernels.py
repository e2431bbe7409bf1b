"""The fast kernels chosen on the host (trainer/training/kernels.py): FlashAttention, Liger and padding-free where the
host has them, sdpa and padded batches where it does not, each said once in train.log (issue 15 item 4)."""

import pytest

from trainer.training.kernels import attention_choice, liger_choice, padding_free_choice


def has(*installed):
    return lambda name: object() if name in installed else None


@pytest.mark.parametrize(
    ("cuda", "capability", "installed", "chosen"),
    [
        (False, 0, ("flash_attn",), "sdpa"),  # no GPU: the package alone does nothing
        (True, 7, ("flash_attn",), "sdpa"),  # a T4 / V100: FlashAttention 2 needs Ampere
        (True, 8, ("flash_attn",), "flash_attention_2"),
        (True, 8, ("kernels",), "kernels-community/flash-attn2"),  # gpurun setup --fast: the Hub's build
        (True, 9, ("kernels",), "kernels-community/flash-attn3"),
        (True, 9, ("flash_attn", "kernels"), "flash_attention_2"),  # the user's own package first
        (False, 0, ("kernels",), "sdpa"),
        (True, 9, ("flash_attn", "flash_attn_interface"), "flash_attention_3"),
        (True, 8, ("flash_attn_interface",), "sdpa"),  # FA3 only on Hopper; no FA2 package
        (True, 9, (), "sdpa"),
    ],
)
def test_auto_attention_takes_flash_only_where_it_runs(cuda, capability, installed, chosen):
    assert attention_choice("auto", cuda, capability, has(*installed))[0] == chosen


def test_a_named_attention_and_liger_are_kept_as_the_task_says():
    assert attention_choice("eager", True, 9, has("flash_attn")) == ("eager", "set in the task")
    assert liger_choice(False, True, has("liger_kernel")) == (False, "set in the task")


def test_liger_auto_needs_cuda_and_the_package():
    assert liger_choice(None, False, has("liger_kernel"))[0] is False
    assert liger_choice(None, True, has())[0] is False
    assert liger_choice(None, True, has("liger_kernel"))[0] is True


def test_padding_free_by_default_only_for_sft_with_flash_attention_and_without_packing():
    assert padding_free_choice(None, "flash_attention_2", "sft", packing=False)[0] is True
    assert padding_free_choice(None, "kernels-community/flash-attn2", "sft", packing=False)[0] is True
    assert padding_free_choice(None, "sdpa", "sft", packing=False)[0] is False
    assert padding_free_choice(None, "flash_attention_2", "sft", packing=True)[0] is False
    assert padding_free_choice(None, "flash_attention_2", "orpo", packing=False)[0] is False
    assert padding_free_choice(False, "flash_attention_2", "sft", packing=False)[0] is False


@pytest.mark.trains
def test_on_the_cpu_each_choice_falls_back_and_says_so_once(tmp_path, capsys):
    from tests.test_recipes import CHAT, train_recipe

    train_recipe(tmp_path, {"train.jsonl": CHAT}, training={"max_steps": 1})
    out = capsys.readouterr().out
    assert out.count("attention: sdpa (auto: no CUDA here, and FlashAttention needs an NVIDIA GPU)") == 1, out
    assert out.count("liger kernels: off (auto: no CUDA here") == 1
    assert out.count("padding-free batches: off (auto: only with FlashAttention") == 1


@pytest.mark.trains
def test_a_gpu_only_kernel_named_in_the_task_is_refused_on_a_cpu_host_before_anything_loads(tmp_path):
    from tests.test_recipes import CHAT, train_recipe

    with pytest.raises(AssertionError) as refused:  # train_recipe asserts the run succeeded
        train_recipe(tmp_path, {"train.jsonl": CHAT}, training={"attn_implementation": "flash_attention_2"})
    events = str(refused.value)  # the run's events.jsonl: an error event, and no training
    assert '"kind": "error"' in events and '"kind": "train_begin"' not in events, events
    assert "attn_implementation flash_attention_2 needs CUDA and this host has none" in events
    assert "leave it unset (auto)" in events
