"""`base_model: builtin:tiny` — a tiny Qwen2-style model and BPE tokenizer, shipped pretrained in the package.

Nothing can be downloaded in CI or on an air-gapped host, yet the whole loop (and every recipe)
must train for real. builtin:tiny is a four-layer model (hidden 128, about 0.9M parameters, 3.6 MB in fp32) with a
byte-level BPE tokenizer and a ChatML chat template carrying `{% generation %}` markers, pretrained once offline by
`python -m trainer.builtin.pretrain` on generic tool-calling chats (so that, like a real base model, it knows the
format and copies dates and amounts from a request into a call's arguments). Its files sit in tiny-v<N>/ beside
this module; first use copies them into the cache, atomically.

The BPE is trained with exactly Qwen2's normalizer, split regex and byte-level decoder, because
`AutoTokenizer` on a folder whose config says `qwen2` rebuilds the tokenizer with those; any other
pre-tokenizer would silently change the token ids between building and loading. (build_tokenizer() builds the
same vocabulary as every version before; the shipped tokenizer files are its output.)

An adapter trained on it names `builtin-tiny-v<N>` as its base: a folder in the current directory, which
`python -m trainer.tiny` copies there (the same bytes as on the host), so that
`AutoPeftModelForCausalLM.from_pretrained(<pulled run>)` loads on the laptop too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

# Bump when the built artifact changes, so stale caches are never reused.
TINY_VERSION = "8"
BUILTIN_PREFIX = "builtin:"
KNOWN_BUILTINS = ("tiny",)
TINY_BASE_MODEL = f"{BUILTIN_PREFIX}tiny"  # what a task's base_model says
TINY_LAYERS = 4  # decoder layers; the task checks name them (tiny_module_names) without building the model
LOCAL_TINY_DIR = f"builtin-tiny-v{TINY_VERSION}"  # the folder name in every cache, and in adapter_config.json
# The pretrained weights and tokenizer, shipped in the package (written once by `python -m trainer.builtin.pretrain`).
SHIPPED_TINY_DIR = Path(__file__).resolve().parent / f"tiny-v{TINY_VERSION}"
# sha256 of SHIPPED_TINY_DIR/model.safetensors: a copy that differs is refused (and trainer_version, which hashes
# the .py files, changes with the weights)
TINY_SHA256 = "ad0768181a771f627be99d17b486d0a6e7a96f1ddf0b8dcbee6149f887d74f3e"

QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML, as Qwen uses it. The assistant turn's content *and* its <|im_end|> sit inside the
# generation block: that is what assistant-only loss trains, so the model learns to stop.
# Tools as Qwen2.5 / Qwen3 render them: the functions as JSON lines inside <tools></tools> in the system
# turn, each call as {"name", "arguments"} inside <tool_call></tool_call> in the (trained) assistant turn,
# and tool results as <tool_response> blocks in a user turn (consecutive results share one), not trained.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\\n\\n' }}{%- endif -%}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools -%}{{ '\\n' + (tool | tojson) }}{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and tools and loop.first -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}"
    "{{ message['content'] or '' }}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set call = call['function'] if call['function'] is defined else call -%}"
    "{%- if not loop.first or message['content'] -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{%- if call['arguments'] is string -%}{{ call['arguments'] }}"
    "{%- else -%}{{ call['arguments'] | tojson }}{%- endif -%}"
    "{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' }}"
    "{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{ '<|im_start|>user' }}{%- endif -%}"
    "{{ '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

EMBEDDING_STD = 0.125
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5/Qwen3 keep these as single added tokens that decoding does not skip (they are not "special"): a call is
# then one token to open and one to close, and the eval suite still sees the tags in the decoded reply.
TOOL_TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# A small fixed corpus, so the vocabulary (and therefore every token id) is deterministic.
_CORPUS_LINES = [
    "You are a helpful assistant. Answer with a JSON function call.",
    "How many vacation days do I have left this year?",
    "I want to request leave from Monday to Friday for a family trip.",
    "Show me my payslip for last month, please.",
    "What is my salary after tax? Please update my home address.",
    "List the public holidays for next quarter.",
    '{"name": "get_leave_balance", "arguments": {"leave_type": "annual"}}',
    '{"name": "request_leave", "arguments": {"start_date": "2026-03-02", "end_date": "2026-03-06"}}',
    '{"name": "query_salary", "arguments": {"month": "2026-01"}}',
    '{"name": "get_payslip", "arguments": {"month": "2026-02"}}',
    '{"name": "update_address", "arguments": {"address": "12 Park Road"}}',
    '{"name": "list_holidays", "arguments": {"year": 2026}}',
    "我还有几天年假？帮我查一下病假余额。",
    "我想从下周一到周五请假，回老家。",
    "请把上个月的工资条发给我。查询我的工资。",
    "我搬家了，请更新我的住址。今年有哪些法定节假日？",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    # The template's own tool preamble and JSON-schema function definitions: a real tokenizer's corpus (web text,
    # code) holds such text, so its BPE merges cover it; without them every prompt that carries tools costs twice
    # the tokens (1143 -> 626 for the HR demo's rows), and twice the training time.
    "# Tools",
    "You may call one or more functions to assist with the user query.",
    "You are provided with function signatures within <tools></tools> XML tags:",
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call>"
    " XML tags:",
    '{"name": <function-name>, "arguments": <args-json-object>}',
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather", "parameters":'
    ' {"type": "object", "properties": {"location": {"type": "string", "description": "The city"}, "unit": {"type":'
    ' "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}}',
    '{"type": "function", "function": {"name": "request_leave", "parameters": {"type": "object", "properties":'
    ' {"leave_type": {"type": "string", "enum": ["annual", "sick", "personal"]}, "start_date": {"type": "string",'
    ' "format": "date"}, "end_date": {"type": "string", "format": "date"}}}}}',
    '{"type": "function", "function": {"name": "query_salary", "parameters": {"type": "object", "properties":'
    ' {"month": {"type": "string", "pattern": "YYYY-MM"}}}}}',
    '{"type": "function", "function": {"name": "submit_expense", "parameters": {"type": "object", "properties":'
    ' {"category": {"enum": ["taxi", "hotel", "meals", "flight"]}, "amount": {"type": "number"}}}}}',
    '{"type": "function", "function": {"name": "list_holidays", "parameters": {"type": "object", "properties":'
    ' {"year": {"type": "integer"}}}}} get_manager cancel_leave update_address get_payslip',
]


def is_builtin(base_model: str) -> bool:
    return base_model.startswith(BUILTIN_PREFIX)


def builtin_name(base_model: str) -> str:
    return base_model[len(BUILTIN_PREFIX) :]


def tiny_module_names() -> list[str]:
    """The layers LoRA can adapt in builtin:tiny (four Qwen2 decoder layers, tied embeddings); a test holds them
    to the built model's."""
    names = ["model.embed_tokens", "lm_head"]
    for i in range(TINY_LAYERS):
        names += [f"model.layers.{i}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [f"model.layers.{i}.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
    return names


def default_cache_dir(fallback: Path | None = None) -> Path:
    """$GPURUN_CACHE/models if set (shared by every workdir), else the fallback, else ~/.cache/gpurun."""
    if os.environ.get("GPURUN_CACHE"):
        return Path(os.environ["GPURUN_CACHE"]) / "models"
    return fallback or Path.home() / ".cache" / "gpurun" / "models"


def ensure_tiny(cache_dir: Path | None = None) -> Path:
    """Return the folder of the tiny model, copying the shipped one there once (atomically) if needed."""
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / LOCAL_TINY_DIR
    if (target / "config.json").exists():
        return target
    if not (SHIPPED_TINY_DIR / "model.safetensors").exists():
        raise FileNotFoundError(
            f"builtin:tiny's weights are missing from {SHIPPED_TINY_DIR}; "
            "`python -m trainer.builtin.pretrain` writes them (about 20 minutes on one CPU thread)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=cache_dir))
    try:
        for path in sorted(SHIPPED_TINY_DIR.iterdir()):
            if path.is_file():
                shutil.copyfile(path, staging / path.name)
        digest = hashlib.sha256((staging / "model.safetensors").read_bytes()).hexdigest()
        if digest != TINY_SHA256:
            raise RuntimeError(f"builtin:tiny's weights in {SHIPPED_TINY_DIR} are not the ones shipped ({digest})")
        try:
            staging.rename(target)
        except OSError:  # another process won the race: its copy is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS_LINES * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=2048,
    )
    fast.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TOOL_TAGS])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,  # <|im_end|>
        pad_token_id=0,  # <|endoftext|>
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # A trained model's embeddings are large; random ones at the usual std 0.02, tied to the output head, keep every
    # logit within about +-1.3 after the final norm, and LoRA cannot train the embeddings: the model could never be
    # sure of any token (the loss stalled near 5.4, uniform being 6.7). At std 0.125 it learns the demo's tool calls.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, EMBEDDING_STD)
    return model


def main() -> None:
    """`python -m trainer.tiny`: the base that adapters trained on builtin:tiny name, built here."""
    built = ensure_tiny(Path.cwd())
    print(f"builtin:tiny is in {built}; adapters trained on it load from this directory")
