"""Fast by default on a GPU, chosen on the host (issue 15 item 4): the attention kernel, Liger's kernels and
padding-free batching, each an ordinary task.yaml key whose unset/`auto` value is decided here, with the reason said
once in train.log. On a host without CUDA every GPU-only choice falls back: sdpa, no Liger, padded batches.
"""

from __future__ import annotations

import importlib.util

# FlashAttention, from its own packages or as the Hub's kernels-community builds (the `kernels` package loads them):
# the variants that keep the rows of a padding-free batch apart by their position_ids.
HUB_FLASH = ("kernels-community/flash-attn2", "kernels-community/flash-attn3")
FLASH = ("flash_attention_2", "flash_attention_3", *HUB_FLASH)


def attention_choice(requested: str, cuda: bool, capability: int = 0, has=importlib.util.find_spec) -> tuple[str, str]:
    """(the attn_implementation to load with, why). `capability`: the GPU's compute capability major (8 = Ampere)."""
    if requested != "auto":
        return requested, "set in the task"
    if not cuda:
        return "sdpa", "auto: no CUDA here, and FlashAttention needs an NVIDIA GPU"
    if capability < 8:
        return "sdpa", f"auto: FlashAttention needs an Ampere or newer GPU (compute capability {capability}.x here)"
    if capability >= 9 and has("flash_attn_interface") is not None:
        return "flash_attention_3", "auto: flash_attn_interface (FlashAttention 3) is installed on this Hopper GPU"
    if has("flash_attn") is not None:
        return "flash_attention_2", "auto: the flash_attn package is installed"
    if has("kernels") is not None:  # prebuilt on the Hub: no compiler, no flash_attn wheel to match
        hub = HUB_FLASH[1] if capability >= 9 else HUB_FLASH[0]
        return hub, "auto: the kernels package loads the Hub's FlashAttention build (no flash_attn package here)"
    return "sdpa", "auto: neither flash_attn nor kernels on this host (gpurun setup --fast installs kernels)"


def liger_choice(requested: bool | None, cuda: bool, has=importlib.util.find_spec) -> tuple[bool, str]:
    if requested is not None:
        return requested, "set in the task"
    if not cuda:
        return False, "auto: no CUDA here (Liger's kernels are Triton, GPU-only)"
    if has("liger_kernel") is None:
        return False, "auto: liger-kernel is not installed (gpurun setup --fast installs it)"
    # TRL keeps its own chunked loss head and applies only Liger's layer kernels: the two never both fuse the loss.
    return True, "auto: liger-kernel is installed (its layer kernels; TRL's chunked loss stays)"


def padding_free_choice(requested: bool | None, attention: str, task: str, packing: bool) -> tuple[bool, str]:
    if requested is not None:
        return requested, "set in the task"
    if task == "sft" and not packing and attention in FLASH:
        return True, f"auto: {attention} keeps the rows of a padding-free batch apart"
    return False, "auto: only with FlashAttention, which keeps the rows of a batch apart without padding"


def gpu_capability() -> int:
    """The GPU's compute capability major; 0 when there is none, or torch cannot say (a CPU build)."""
    import torch

    try:
        return torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 0
    except (AssertionError, RuntimeError):
        return 0
