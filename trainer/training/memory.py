"""How much memory one training process needs at its peak, from the model's config.json and the task: no weights
loaded, no torch imported (issue 15 item 1). Standard library only, so `validate` and the host's start can both ask.

The parts, for a decoder of the Llama/Qwen family trained by TRL's SFTTrainer (steady state, step 2 onwards):

    weights        every parameter in its dtype (4-bit: half a byte plus its constants; 8-bit: a byte)
    LoRA+Adam      the trainable parameters, their gradients and AdamW's two fp32 moments
    activations    what autograd keeps from the forward for the backward, per token and layer (with gradient
                   checkpointing: each layer's input, plus one layer's worth while it is recomputed)
    loss head      TRL's fused LM head: one [tokens<=4096, 32768] tile in the compute dtype (it never makes the
                   whole [tokens, vocab] logits), and the hidden states' fp32 gradient
    context        the CUDA context and allocator slack on a GPU; nothing on the CPU

The formula is checked against PyTorch's profiler (profile_memory=True) on real CPU training steps in
tests/test_memory_estimate.py: within 20% on builtin:tiny and larger random-init models, LoRA and full, with and
without checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GB = 1024**3
HEAD_TOKEN_TILE = 4096  # trl/kernels/chunked_logprob.py: TOKEN_CHUNK_SIZE
HEAD_VOCAB_TILE = 32768  # trl/trainer/utils.py: _CHUNKED_LOGPROB_CHUNK_SIZE, allocated whole whatever the vocab
CUDA_CONTEXT = 0.6 * GB  # the CUDA context, cuBLAS workspace and allocator slack, measured on A100/H100 by peers
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes, as its config.json gives them."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    attention_bias: bool
    head_dim: int = 0  # 0: hidden / heads (Qwen3 and Gemma set it apart)

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        config = config.get("text_config", config)  # a multimodal config holds its decoder's
        heads = int(config["num_attention_heads"])
        return cls(
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate=int(config["intermediate_size"]),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
            head_dim=int(config.get("head_dim") or 0),
        )

    @property
    def head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q(self) -> int:
        return self.head * self.heads

    @property
    def kv(self) -> int:
        return self.head * self.kv_heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden, self.q, self.kv, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    def other_params(self) -> int:
        """Embeddings, LM head, norms and biases: what quantization leaves in the compute dtype."""
        bias = (self.q + 2 * self.kv) if self.attention_bias else 0
        per_layer = 2 * self.hidden + bias
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * per_layer + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_linear_params() + self.other_params()


@dataclass(frozen=True)
class Setup:
    """What the task makes of the model: one process's share."""

    batch: int  # rows per device per micro-batch
    tokens: int  # the longest row's tokens (max_length at most)
    dtype_bytes: int = 4  # 4 fp32, 2 bf16/fp16
    quant_bits: int | None = None  # 4 or 8 with bitsandbytes
    lora_r: int | None = 16  # None: a full fine-tune
    targets: tuple[str, ...] = ALL_LINEAR
    lora_dropout: bool = True
    checkpointing: bool = False
    shards: int = 1  # FSDP / ZeRO-3: weights, gradients and optimizer split over this many processes
    cuda: bool = False


@dataclass(frozen=True)
class Estimate:
    weights: float
    trainable: float
    activations: float
    loss_head: float
    gradients: float
    context: float

    @property
    def total(self) -> float:
        return self.weights + self.trainable + self.activations + self.loss_head + self.gradients + self.context

    def line(self, free: float | None = None, where: str = "") -> str:
        """`weights 2.6 GB · LoRA+Adam 0.5 · activations 3.1 · loss head 0.4 · context 0.6 = 7.2 GB[ of 23.6 GB free
        on GPU 0]`."""
        parts = {
            "weights": self.weights,
            "trainable+Adam": self.trainable,
            "activations": self.activations,
            "loss head": self.loss_head,
            "gradients": self.gradients,
            "context": self.context,
        }
        said = " · ".join(f"{name} {size(n)}" for name, n in parts.items() if n) + f" = {size(self.total)}"
        if free is not None:
            said += f" of {size(free)} free" + (f" on {where}" if where else "")
        return said


def size(n: float) -> str:
    """3.2 GB, 0.6 GB, 45 MB."""
    if n >= 0.1 * GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 1024**2:.0f} MB" if n >= 1024**2 else f"{n / 1024**2:.1f} MB"


def estimate(shape: ModelShape, setup: Setup) -> Estimate:
    a = setup.dtype_bytes
    tokens = setup.batch * setup.tokens
    linear = shape.layers * shape.layer_linear_params()
    if setup.quant_bits == 4:
        weight_bytes = linear * (0.5 + 0.5 / 64 * 1.1) + shape.other_params() * a  # nf4 + (double-quantized) absmax
    elif setup.quant_bits == 8:
        weight_bytes = linear * (1 + 4 / 4096) + shape.other_params() * a
    else:
        weight_bytes = shape.params() * a

    if setup.lora_r is None:
        trainable, grad_bytes = shape.params(), a  # a full fine-tune trains the weights in their own dtype
        resident = trainable * 8  # AdamW's two fp32 moments
    else:
        linears = shape.linears()
        trainable = shape.layers * sum(setup.lora_r * (i + o) for m, (i, o) in linears.items() if m in setup.targets)
        grad_bytes = 4  # peft keeps the adapter in fp32 under a bf16 base
        resident = trainable * (4 + 8)  # the adapter itself and its moments
    # Gradients exist from the backward to the optimizer step (zero_grad frees them): they peak, with one foreach
    # temporary of AdamW, after the saved activations are gone.
    step_phase = trainable * grad_bytes * 2

    layer = _layer_activations(shape, setup) * tokens
    edges = 3 * shape.hidden * a * tokens  # embeddings out, final norm in and out
    if setup.checkpointing:
        saved = shape.layers * shape.hidden * a * tokens + edges  # each layer's input
        # In the backward, one layer at a time is recomputed, and its gradients flow, once the loss head is done.
        recompute = layer + 2 * tokens * max(shape.intermediate, shape.hidden) * a
    else:
        saved = shape.layers * layer + edges
        recompute = 0
    head = _loss_head(shape, setup, tokens)
    # The peak comes in the loss head's backward (every saved activation still held), or with checkpointing while a
    # layer is recomputed (the head's tile freed by then), or at the optimizer step: whichever is largest.
    gradients = 0.0
    if step_phase > max(saved + head, saved + recompute):
        saved, head, gradients = 0.0, 0.0, step_phase
    elif recompute > head:
        saved, head = saved + recompute, 0.0
    shards = max(1, setup.shards)
    return Estimate(
        weights=weight_bytes / shards,
        trainable=resident / shards,
        activations=saved,
        loss_head=head,
        gradients=gradients / shards,
        context=CUDA_CONTEXT if setup.cuda else 0.0,
    )


def _loss_head(shape: ModelShape, setup: Setup, tokens: int) -> float:
    """TRL's fused LM head: a [<=4096 tokens, 32768] tile whatever the vocab, the hidden states' fp32 gradient and,
    without Triton (the CPU), about seven fp32 [tokens, vocab chunk] temporaries of the torch-ops fallback."""
    tile_tokens = min(tokens, HEAD_TOKEN_TILE)
    head = tile_tokens * HEAD_VOCAB_TILE * setup.dtype_bytes + tokens * shape.hidden * 4
    if not setup.cuda:
        head += 7 * tile_tokens * min(shape.vocab, HEAD_VOCAB_TILE) * 4
    return head


def _layer_activations(shape: ModelShape, setup: Setup) -> float:
    """Bytes autograd keeps per token for one decoder layer."""
    a, h, q, kv, i = setup.dtype_bytes, shape.hidden, shape.q, shape.kv, shape.intermediate
    # Two norms' inputs and outputs (h each), q and k after RoPE, v, the attention output and its softmax
    # statistics, the MLP's gate, up, act(gate) and their product (i each). Trainable base weights make autograd
    # keep about 1.5 h more (measured: tests/test_memory_estimate.py).
    kept = (4 * h + 2 * q + 2 * kv + 4 * i) * a
    if setup.lora_r is None:
        kept += 1.5 * h * a
    if setup.lora_r is not None and setup.lora_dropout:
        # Each adapted module's dropout keeps its dropped input and the mask (a byte an element).
        kept += sum(inp * (a + 1) for m, (inp, _) in shape.linears().items() if m in setup.targets)
    if setup.lora_r is not None:
        kept += sum(setup.lora_r * a for m in shape.linears() if m in setup.targets)  # lora_A's outputs
    return kept


def setup_for(config, tokens: int, cuda: bool, shards: int = 1) -> Setup:
    """The Setup of a task (a TaskConfig as on_this_machine resolved it), its longest row `tokens` long."""
    t, q, lora = config.training, config.quantization, config.lora
    quant_bits = 4 if q and q.load_in_4bit else 8 if q and q.load_in_8bit else None
    if lora is None:
        targets = ALL_LINEAR
    elif lora.target_modules == ["all-linear"]:
        targets = ALL_LINEAR
    else:
        targets = tuple(m for m in ALL_LINEAR if m in lora.target_modules)
    return Setup(
        batch=t.per_device_train_batch_size,
        tokens=t.max_length if t.packing else min(tokens, t.max_length),
        dtype_bytes=2 if (t.bf16 or t.fp16) else 4,
        quant_bits=quant_bits,
        lora_r=lora.r if lora is not None else None,
        targets=targets,
        lora_dropout=bool(lora and lora.dropout > 0),
        checkpointing=bool(t.gradient_checkpointing),
        shards=shards,
        cuda=cuda,
    )


def advice(shape: ModelShape, setup: Setup, accumulation: int, free: float) -> list[str]:
    """The concrete changes that would fit `free` bytes, each with its own estimate (as `--set` flags), the
    effective batch kept: a smaller per-device batch comes with as much more accumulation."""
    said = []
    # The largest divisor of the batch that fits (or 1): the effective batch stays batch x accumulation exactly.
    for batch in sorted((d for d in range(1, setup.batch) if setup.batch % d == 0), reverse=True):
        smaller = estimate(shape, _with(setup, batch=batch))
        if smaller.total <= free or batch == 1:
            acc = accumulation * setup.batch // batch
            said.append(
                f"--set training.per_device_train_batch_size={batch} "
                f"--set training.gradient_accumulation_steps={acc} → {size(smaller.total)}"
            )
            break
    if not setup.checkpointing:
        said.append(_change("training.gradient_checkpointing=true", shape, _with(setup, checkpointing=True)))
    if setup.lora_r is not None and setup.quant_bits is None:
        said.append(_change("quantization.load_in_4bit=true", shape, _with(setup, quant_bits=4)) + " (QLoRA)")
    if setup.tokens > 256:
        half = setup.tokens // 2
        said.append(_change(f"training.max_length={half}", shape, _with(setup, tokens=half)) + " (longer rows cut)")
    return said


def _change(key_value: str, shape: ModelShape, setup: Setup) -> str:
    return f"--set {key_value} → {size(estimate(shape, setup).total)}"


def _with(setup: Setup, **changes) -> Setup:
    return replace(setup, **changes)
