"""How much disk a run's checkpoints need, estimated before it starts from the base model's config.json.
Standard library only.

`start` refuses a run whose checkpoints would not fit in the workdir, rather than let it fill the disk
hours in; when the base model's shape cannot be read on the host, no estimate is better than a wild guess.
"""

import json
import math
import re
from pathlib import Path

from trainer.host.disk import free_bytes
from trainer.host.files import read_or_none
from trainer.sizes import human_bytes


def free_space_refusal(workdir: Path, config: dict, env: dict) -> dict | None:
    """The reply refusing a run whose checkpoints would not fit in the workdir, or None (enough room, or unknown)."""
    need = checkpoint_bytes_needed(config, workdir, env)
    if need is None:
        return None  # the base model's shape is not readable here: better no check than a wild guess
    free = free_bytes(workdir)
    if free >= need:
        return None
    return {
        "error": f"not enough free space in {workdir}: {human_bytes(free)} free, "
        f"the run's checkpoints need about {human_bytes(need)}",
        "hint": "free some space, lower training.save_total_limit, or use another workdir",
    }


# Every linear layer `all-linear` adapts in a decoder block, as (in, out) features from config.json.
def _linear_shapes(cfg: dict) -> dict[str, tuple[int, int]] | None:
    try:
        hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError):
        return None
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def trained_parameters(config: dict, model_cfg: dict) -> int | None:
    """How many parameters the run trains: LoRA's A and B (r x in + out x r) per adapted layer, or every weight."""
    model_cfg = model_cfg.get("text_config") or model_cfg
    shapes = _linear_shapes(model_cfg)
    layers = model_cfg.get("num_hidden_layers")
    if shapes is None or not isinstance(layers, int):
        return None
    lora = config.get("lora")
    if not lora:  # full fine-tune: the blocks plus the embeddings (and an untied output layer)
        vocab = int(model_cfg.get("vocab_size") or 0)
        embeddings = vocab * model_cfg["hidden_size"] * (1 if model_cfg.get("tie_word_embeddings") else 2)
        return layers * sum(i * o for i, o in shapes.values()) + embeddings
    targets = lora.get("target_modules") or ["all-linear"]
    targets = [targets] if isinstance(targets, str) else targets
    names = list(shapes) if "all-linear" in targets else [t for t in targets if t in shapes]
    if not names:
        return None  # module names this estimate does not know (another architecture)
    return layers * sum(int(lora.get("r") or 0) * (shapes[n][0] + shapes[n][1]) for n in names)


def checkpoint_bytes_needed(config: dict, workdir: Path, env: dict) -> int | None:
    """About what the run writes: the checkpoints kept (weights + optimizer state + tokenizer) and the final adapter."""
    base = base_model_dir(str(config.get("base_model") or ""), workdir, env)
    if base is None:
        return None
    try:
        model_cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    params = trained_parameters(config, model_cfg)
    if params is None:
        return None
    training = config.get("training") or {}
    weight_bytes, moment_bytes = bytes_per_parameter(config)
    tokenizer = sum(f.stat().st_size for f in base.iterdir() if f.is_file() and TOKENIZER_PARTS.search(f.name))
    per_checkpoint = params * (weight_bytes + moment_bytes)
    # Each checkpoint also holds the tokenizer, and ~100 kB of state: rng, scheduler, trainer_state, args, model card.
    per_checkpoint += tokenizer + 128_000
    kept = checkpoints_kept(training)
    if kept is None:
        return None
    return kept * per_checkpoint + params * weight_bytes + tokenizer + 64_000


TOKENIZER_PARTS = re.compile(r"token|vocab|merges|chat_template")


def bytes_per_parameter(config: dict) -> tuple[int, int]:
    """(weight, optimizer state) bytes per trained parameter, from the run's dtype and optimizer."""
    training = config.get("training") or {}
    weight_bytes = 4  # LoRA weights train in fp32 whatever the base's dtype (PEFT upcasts them)
    if not config.get("lora") and (training.get("bf16") or training.get("fp16")):
        weight_bytes = 2
    optim = str(training.get("optim") or "adamw_torch")
    if "8bit" in optim:
        moment_bytes = 2  # two 1-byte moments
    elif "adafactor" in optim or "sgd" in optim:
        moment_bytes = 0  # factored (a few rows and columns), or no momentum
    else:
        moment_bytes = 2 * weight_bytes  # Adam's two moments, in the weights' dtype
    return weight_bytes, moment_bytes


def checkpoints_kept(training: dict) -> int | None:
    """How many checkpoints exist at once at most: save_total_limit, or every save when that is fewer."""
    strategy = training.get("save_strategy") or "steps"
    if strategy == "no":
        return 0
    limit = training.get("save_total_limit")
    saves = None
    max_steps = training.get("max_steps") or -1
    if strategy == "steps" and max_steps > 0 and training.get("save_steps"):
        every = training["save_steps"]
        every = every * max_steps if every < 1 else every  # a fraction of the total steps
        saves = math.ceil(max_steps / every)
    elif strategy == "epoch" and max_steps <= 0:
        saves = math.ceil(training.get("num_train_epochs") or 1)
    if limit and limit > 0:
        return min(limit, saves) if saves is not None else limit
    return saves


def base_model_dir(base_model: str, workdir: Path, env: dict) -> Path | None:
    """The folder holding the base model's config.json on this host, when it is there to read."""
    from trainer.builtin.tiny import BUILTIN_PREFIX, TINY_VERSION

    if base_model.startswith(BUILTIN_PREFIX):
        # Where trainer/training/run.py builds it: $GPURUN_CACHE/models, else <workdir>/cache/models.
        cache = Path(env["GPURUN_CACHE"]) / "models" if env.get("GPURUN_CACHE") else workdir / "cache" / "models"
        folder = cache / f"builtin-{base_model[len(BUILTIN_PREFIX) :]}-v{TINY_VERSION}"
        return folder if (folder / "config.json").is_file() else None
    local = Path(base_model).expanduser()
    if local.is_absolute():
        return local if (local / "config.json").is_file() else None
    if base_model.count("/") != 1:
        return None
    # The hub cache, as huggingface_hub lays it out: models--org--name/snapshots/<commit>/config.json.
    hub = env.get("HF_HUB_CACHE")
    if not hub:
        home = env.get("HF_HOME") or str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
        hub = str(Path(home) / "hub")
    repo = Path(hub).expanduser() / ("models--" + base_model.replace("/", "--"))
    ref = read_or_none(repo / "refs" / "main")
    if ref and (repo / "snapshots" / ref.strip() / "config.json").is_file():
        return repo / "snapshots" / ref.strip()
    found = sorted(repo.glob("snapshots/*/config.json"))
    return found[-1].parent if found else None
