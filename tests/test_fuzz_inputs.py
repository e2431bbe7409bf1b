"""Generated bad inputs: whatever a task.yaml or a data file holds, validate answers with a clean
`Error:` + `Hint:` or accepts it, never an internal error, a traceback or a hang; and what it
accepts trains for 2 steps on builtin:tiny.

Seeded: 300 mutated task.yaml files and 300 mutated data files of the kinds users and generators
produced (non-UTF-8 bytes, broken JSON, CSV rows of the wrong width or with huge fields, broken
Parquet, deep nesting, lone surrogates, console markup, wrong types, nonsense training values).
Validation runs in-process (the functions `gpurun validate` calls); a few inputs go through the real
CLI. CI trains a sample of the accepted inputs; GPURUN_FUZZ_FULL=1 trains every one of them.
"""

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.checks import check_task, task_error
from launcher.errors import GpurunError
from trainer.task.loading import config_to_dict, load_task
from trainer.task.problems import Problem, TaskError

REPO = Path(__file__).resolve().parent.parent
SEED = 8
CONFIG_CASES = 300
DATA_CASES = 300
FULL = bool(os.environ.get("GPURUN_FUZZ_FULL"))
TRAINED_IN_CI = 6
PER_INPUT_SECONDS = 30  # far above what one validation takes (milliseconds to a second): reaching it is a hang

NASTY = [
    None,
    0,
    -1,
    -5,
    1.5,
    float("nan"),
    float("inf"),
    True,
    "",
    " ",
    "[/x]",
    "[bold red]x[/]",
    "\ud800",
    "x" * 200_000,
    [],
    {},
    [1, "a"],
    {"a": 1},
    "\x00",
    "\u2028",
    "🙂 é 中文",
    2**70,
]
CONFIG_KEYS = [
    "base_model",
    "task",
    "data",
    "data.train",
    "data.eval",
    "data.format",
    "data.encoding",
    "data.eval_split",
    "data.fraction",
    "data.system_prompt",
    "data.seed",
    "lora",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target_modules",
    "training",
    "training.learning_rate",
    "training.warmup_steps",
    "training.seed",
    "training.max_steps",
    "training.num_train_epochs",
    "training.max_length",
    "training.lr_scheduler_type",
    "training.lr_scheduler_kwargs",
    "training.weight_decay",
    "training.max_grad_norm",
    "training.eval_steps",
    "training.save_steps",
    "training.save_strategy",
    "training.eval_strategy",
    "training.logging_steps",
    "training.per_device_train_batch_size",
    "training.gradient_accumulation_steps",
    "training.optim",
    "training.packing",
    "training.padding_free",
    "early_stopping",
    "early_stopping.patience",
    "eval_suite",
    "eval_suite.max_new_tokens",
    "preference.beta",
    "samples",
]
SCHEDULER_WORDS = ["num_cycles", "num_cycle", "min_lr", "min_lr_rate", "power", "lr_end", "timescale", "factor"]
SCHEDULER_WORDS += ["num_decay_steps", "warmup_type", "decay_type", "patience", "mode", "last_epoch", "foo"]
MODULE_WORDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "c_attn"]
MODULE_WORDS += ["self_attn.q_proj", "mlp.down_proj", "lm_head", "embed_tokens", "mlp", "layers.0.self_attn.v_proj"]


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    def ring(_signum, _frame):
        raise Hang(f"no answer in {seconds}s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- the base task and its mutations


def base_task(folder: Path) -> Path:
    """tasks/demo, cut to a few rows and steps: every accepted mutation of it trains in seconds."""
    task = folder / "task"
    (task / "data").mkdir(parents=True)
    for name, count in (("train", 8), ("eval", 3), ("test", 3)):
        lines = (REPO / "tasks" / "demo" / "data" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        (task / "data" / f"{name}.jsonl").write_text("\n".join(lines[:count]) + "\n", encoding="utf-8")
    config = yaml.safe_load((REPO / "tasks" / "demo" / "task.yaml").read_text())
    config["training"].update(max_steps=2, eval_steps=1, save_steps=1, logging_steps=1, warmup_steps=0)
    config["eval_suite"].update(limit=2, max_new_tokens=8)
    config["samples"] = 1
    (task / "task.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return task


def set_dotted(config: dict, dotted: str, value) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def dump(config: dict) -> bytes:
    # allow_unicode=False: a lone surrogate is written as a "\ud800" escape, as a generator would
    return yaml.safe_dump(config, sort_keys=False).encode("utf-8")


def mutate_config(rng: random.Random, task: Path) -> str:
    """One mutation of task.yaml; returns what it did (shown when a case fails)."""
    text = (task / "task.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    kind = rng.choice(
        ["value", "value", "value", "delete", "unknown", "scheduler", "early_stopping", "modules", "duplicate"]
        + ["raw_bytes", "truncate", "deep", "laughs", "data_path", "encoding"]
    )
    if kind == "value":
        key, value = rng.choice(CONFIG_KEYS), rng.choice(NASTY)
        set_dotted(config, key, value)
        what = f"{key} = {str(value)[:40]!r}"
    elif kind == "delete":
        key = rng.choice(CONFIG_KEYS)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        node.pop(leaf, None)
        what = f"del {key}"
    elif kind == "unknown":
        key = rng.choice(["trainig.lr", "lora.rank2", "[/x]", "data.\ud800", "training.max_stepz", "x.y.z"])
        set_dotted(config, key, rng.choice(NASTY))
        what = f"unknown {key!r}"
    elif kind == "scheduler":
        scheduler = rng.choice(["linear", "cosine", "polynomial", "constant", "inverse_sqrt", "cosine_with_min_lr"])
        scheduler = rng.choice([scheduler, "warmup_stable_decay", "reduce_lr_on_plateau", "cosine_with_restarts"])
        kwargs = {
            w: rng.choice([0.1, 2, -1, "x", float("nan"), "linear", "min"]) for w in rng.sample(SCHEDULER_WORDS, 2)
        }
        config["training"].update(lr_scheduler_type=scheduler, lr_scheduler_kwargs=rng.choice([kwargs, {}]))
        what = f"scheduler {scheduler} {kwargs}"
    elif kind == "early_stopping":
        config["early_stopping"] = {"patience": rng.choice([1, 2, 0, -1])}
        config["training"]["save_strategy"] = rng.choice(["no", "steps", "epoch"])
        config["training"]["eval_strategy"] = rng.choice(["no", "steps", "epoch"])
        config["training"]["save_steps"] = rng.choice([1, 2, 3])
        config["training"]["eval_steps"] = rng.choice([1, 2])
        config["training"]["load_best_model_at_end"] = rng.choice([True, False])
        what = f"early stopping {config['training']}"
    elif kind == "modules":
        config["lora"]["target_modules"] = rng.sample(MODULE_WORDS, rng.randint(1, 3))
        what = f"target_modules {config['lora']['target_modules']}"
    elif kind == "duplicate":
        lines = text.splitlines()
        i = rng.choice([n for n, line in enumerate(lines) if line.startswith("  ") and ":" in line])
        lines.insert(i + 1, lines[i])
        (task / "task.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return f"duplicate line {i + 1}: {lines[i]!r}"
    elif kind == "raw_bytes":
        data = text.encode()
        at = rng.randrange(len(data))
        (task / "task.yaml").write_bytes(data[:at] + rng.choice([b"\xff", b"\xe9", b"\x00", b"\xc3("]) + data[at:])
        return f"bad byte at {at}"
    elif kind == "truncate":
        at = rng.randrange(len(text))
        (task / "task.yaml").write_text(text[:at], encoding="utf-8")
        return f"cut at {at}"
    elif kind == "deep":
        depth = rng.choice([50, 3000])
        (task / "task.yaml").write_text(text + f"extra: {'[' * depth}{']' * depth}\n", encoding="utf-8")
        return f"nested {depth}"
    elif kind == "laughs":
        laughs = 'a: &a ["lol","lol"]\n' + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        (task / "task.yaml").write_text(text + laughs, encoding="utf-8")
        return "billion laughs"
    elif kind == "data_path":
        config["data"]["eval"] = [rng.choice(["../eval.jsonl", "/etc/passwd", "data/../../x.jsonl", "data/nope.jsonl"])]
        what = f"data.eval {config['data']['eval']}"
    else:
        config["data"]["encoding"] = rng.choice(["cp1252", "latin-1", "utf-16", "klingon", "", "utf-8"])
        what = f"encoding {config['data']['encoding']!r}"
    (task / "task.yaml").write_bytes(dump(config))
    return what


def chat_row(rng: random.Random) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Route the request."},
            {"role": "user", "content": rng.choice(["Show my payslip", "我还有几天年假？", "[/x] cancel it"])},
            {"role": "assistant", "content": '{"name": "get_payslip"}'},
        ]
    }


def paths_of(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from paths_of(item, (*prefix, i))


def mutated_row(rng: random.Random) -> dict:
    row = chat_row(rng)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in paths_of(row) if p]
        if not paths:
            break  # everything deleted already
        path = rng.choice(paths)
        parent = row
        for part in path[:-1]:
            parent = parent[part]
        action = rng.choice(["replace", "replace", "delete", "add", "rename"])
        if action == "replace":
            parent[path[-1]] = rng.choice(NASTY + [[{"deep": [[[[[[[[]]]]]]]]}], {"role": "tool"}])
        elif action == "delete" and isinstance(parent, dict):
            parent.pop(path[-1])
        elif action == "add" and isinstance(parent, dict):
            key = rng.choice(["system", "tools", "weight", "tool_calls", "[/x]", "history", "chosen", "\ud800"])
            parent[key] = rng.choice(NASTY + [[{"type": "function", "function": {"name": "f", "arguments": "{"}}]])
        elif action == "rename" and isinstance(parent, dict) and isinstance(path[-1], str):
            new = rng.choice(["conversations", "from", "value", "text", "prompt", "completion", "role", "content"])
            parent[new] = parent.pop(path[-1])
    return row


def mutate_data(rng: random.Random, task: Path) -> str:
    """One mutation of the training data (sometimes in another file type); returns what it did."""
    train = task / "data" / "train.jsonl"
    lines = train.read_text(encoding="utf-8").splitlines()
    kind = rng.choice(["row", "row", "row", "bytes", "json_text", "csv", "csv", "parquet", "json_array", "empty"])
    if kind == "row":
        i = rng.randrange(len(lines))
        row = mutated_row(rng)
        lines[i] = json.dumps(row, ensure_ascii=rng.random() < 0.5)
        with contextlib.suppress(UnicodeEncodeError):
            lines[i].encode("utf-8")
            train.write_text("\n".join(lines) + "\n", encoding="utf-8")
            return f"row {i + 1}: {lines[i][:120]}"
        lines[i] = json.dumps(row)  # a lone surrogate has no UTF-8: written as its escape, as a generator would
        train.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return f"row {i + 1}: {lines[i][:120]}"
    if kind == "bytes":
        data = train.read_bytes()
        at = rng.randrange(len(data))
        bad = rng.choice([b"\xff", b"\xe9", b"\x80\x80", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf"])
        train.write_bytes(bad + data if rng.random() < 0.2 else data[:at] + bad + data[at:])
        return f"bytes {bad!r} at {at}"
    if kind == "json_text":
        i = rng.randrange(len(lines))
        line = lines[i]
        cut = rng.randrange(1, len(line))
        lines[i] = rng.choice(
            [line[:cut], line[:cut] + "'" + line[cut:], line + "}", line.replace('"', "'", 2), "[" * 3000]
        )
        train.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return f"json line {i + 1}: {lines[i][:80]!r}"
    config = yaml.safe_load((task / "task.yaml").read_text())
    if kind == "csv":
        rows = [["prompt", "response"]] + [[f"question {n}", f"answer {n}"] for n in range(6)]
        encoding = "utf-8"
        change = rng.choice(["extra", "fewer", "long", "nul", "quote", "cp1252", "cp1252_declared", "bom", "markup"])
        body = "\n".join(",".join(r) for r in rows) + "\n"
        if change == "extra":
            body += "a,b,c\n"
        elif change == "fewer":
            body += "lonely\n"
        elif change == "long":
            body += f"long,{'y' * 140_000}\n"
        elif change == "nul":
            body += "a\x00b,c\n"
        elif change == "quote":
            body += '"open,quote\n'
        elif change == "markup":
            body += "[/x] please,[bold]ok[/]\n"
        elif change.startswith("cp1252"):
            body += "café résumé,naïve\n"
            encoding = "cp1252"
            if change == "cp1252_declared":
                config["data"]["encoding"] = "cp1252"
        elif change == "bom":
            body = "\ufeff" + body
        (task / "data" / "train.csv").write_bytes(body.encode(encoding))
        config["data"]["train"] = ["data/train.csv"]
        (task / "task.yaml").write_bytes(dump(config))
        return f"csv {change}"
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        target = task / "data" / "train.parquet"
        change = rng.choice(["empty", "garbage", "cut", "good", "ints"])
        if change == "empty":
            target.write_bytes(b"")
        elif change == "garbage":
            target.write_bytes(b"PAR1" + bytes(rng.randrange(256) for _ in range(64)))
        else:
            rows = [json.loads(line) for line in lines]
            if change == "ints":
                table = pa.table({"prompt": list(range(6)), "response": ["x"] * 6})
            else:
                table = pa.Table.from_pylist(rows)
            pq.write_table(table, target)
            if change == "cut":
                data = target.read_bytes()
                target.write_bytes(data[: rng.randrange(len(data))])
        config["data"]["train"] = ["data/train.parquet"]
        (task / "task.yaml").write_bytes(dump(config))
        return f"parquet {change}"
    if kind == "json_array":
        rows = [json.loads(line) for line in lines]
        change = rng.choice(["good", "object", "deep", "row"])
        value = {"good": rows, "object": {"rows": rows}, "deep": [[[[rows]]]] * 2, "row": rows + [mutated_row(rng)]}
        (task / "data" / "train.json").write_text(json.dumps(value[change]), encoding="utf-8")
        config["data"]["train"] = ["data/train.json"]
        (task / "task.yaml").write_bytes(dump(config))
        return f"json array {change}"
    train.write_text(rng.choice(["", "\n\n", "   \n"]), encoding="utf-8")
    return "empty file"


# ---------------------------------------------------------------- validate, as `gpurun validate` does


_TOKENIZERS: dict = {}


@pytest.fixture
def cached_tokenizers(monkeypatch, model_cache):
    """One tokenizer load per model for the whole run (a load costs ~0.2 s; the answer is the same)."""
    import trainer.training.validate

    real = trainer.training.validate.local_tokenizer

    def cached(config, cache_fallback=None):
        if config.base_model not in _TOKENIZERS:
            _TOKENIZERS[config.base_model] = real(config, cache_fallback)
        return _TOKENIZERS[config.base_model]

    monkeypatch.setattr(trainer.training.validate, "local_tokenizer", cached)


def validate(task: Path, overrides: tuple[str, ...] = ()) -> tuple[bool, str]:
    """(accepted, what the user reads): the schema and row checks, then the token checks' JSON, rendered."""
    from rich.console import Console

    import trainer.training.validate
    from launcher.render import plain, token_report_text

    try:
        checked = check_task(task, overrides)
    except GpurunError as exc:
        return False, shown_error(exc)
    out = io.StringIO()
    argv = [str(task)] + [arg for item in overrides for arg in ("--set", item)]
    with contextlib.redirect_stdout(out):
        trainer.training.validate.main(argv)
    report = json.loads(out.getvalue().strip().splitlines()[-1])
    problems = [Problem(p["where"], p["message"], p["hint"]) for p in report["problems"]]
    if problems:
        return False, shown_error(task_error(TaskError(problems), task))
    console = Console(file=io.StringIO(), width=160, highlight=False, soft_wrap=True)  # as the CLI's
    for notice in checked.notices:
        console.print(f"[yellow]notice:[/] {plain(notice)}")
    console.print(f"[green]ok[/] {plain(task)}: {checked.config.task} on {plain(checked.config.base_model)}")
    console.print(token_report_text(report))
    return True, console.file.getvalue()


def shown_error(exc: GpurunError) -> str:
    assert exc.hint.strip(), f"no hint for: {exc.message}"
    assert "internal error" not in exc.message
    return "\n".join([f"Error: {exc.message}", *exc.details, f"Hint: {exc.hint}"])


def generate(tmp_path: Path) -> list[tuple[str, Path, str]]:
    """Every case, written to its own folder: (kind, task folder, what was done)."""
    cases = []
    template = base_task(tmp_path / "base")
    for kind, count, mutate in (("config", CONFIG_CASES, mutate_config), ("data", DATA_CASES, mutate_data)):
        for i in range(count):
            rng = random.Random(f"{SEED}-{kind}-{i}")
            task = tmp_path / f"{kind}-{i:03d}"
            shutil.copytree(template, task)
            cases.append((kind, task, mutate(rng, task)))
    return cases


# Several runs in one process: each is the host's own `run(RUN_DIR)`, and the imports are paid once.
TRAIN_EACH = """
import json, sys, traceback
from trainer.training.run import run
results = {}
for run_dir in sys.argv[1:]:
    try:
        results[run_dir] = run(run_dir)
    except BaseException:
        results[run_dir] = traceback.format_exc()[-2000:]
print("\\nRESULTS " + json.dumps(results))
"""


def train_two_steps(tasks: list[Path], workdir: Path, model_cache: Path) -> dict[str, object]:
    """Each task copied as a push leaves it on the host and trained for 2 steps: {task name: exit code or error}."""
    run_dirs = []
    for task in tasks:
        config = load_task(task, overrides=["training.max_steps=2"])
        shutil.copytree(task, workdir / "tasks" / task.name, symlinks=False)
        run_dir = workdir / "runs" / task.name
        run_dir.mkdir(parents=True)
        record = {"run_id": task.name, "task": task.name, "config": config_to_dict(config), "secret_env": []}
        (run_dir / "run.json").write_text(json.dumps(record))
        run_dirs.append(str(run_dir))
    env = {**os.environ, "GPURUN_CACHE": str(model_cache)}
    argv = [sys.executable, "-c", TRAIN_EACH, *run_dirs]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60 + 120 * len(tasks))
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULTS ")), None)
    assert line, f"the training process died (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return {Path(k).name: v for k, v in json.loads(line[8:]).items()}


def test_generated_bad_inputs_never_crash_and_what_validate_accepts_trains(tmp_path, model_cache, cached_tokenizers):
    cases = generate(tmp_path)
    assert sum(k == "config" for k, _, _ in cases) >= 300 and sum(k == "data" for k, _, _ in cases) >= 300
    accepted, crashes = [], []
    for _kind, task, what in cases:
        try:
            with deadline(PER_INPUT_SECONDS):
                ok, shown = validate(task)
                if ok:
                    ok, shown = validate(task, ("training.max_steps=2",))
        except Exception as exc:  # noqa: BLE001 - a crash is what this test looks for: collect them all
            crashes.append(f"{task.name} ({what}): {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if ok:
            accepted.append((task, what))
    assert not crashes, f"{len(crashes)} crash(es):\n" + "\n".join(crashes[:30])
    assert 0 < len(accepted) < len(cases)  # the mutations are neither all harmless nor all fatal
    rng = random.Random(SEED)
    sample = accepted
    if not FULL:  # as many accepted data mutations as config ones, when there are enough
        by_kind = [[c for c in accepted if c[0].name.startswith(kind)] for kind in ("config", "data")]
        sample = [c for group in by_kind for c in rng.sample(group, min(TRAINED_IN_CI // 2, len(group)))]
    results = train_two_steps([task for task, _ in sample], tmp_path / "host", model_cache)
    failed = [f"{task.name} ({what}): {results[task.name]}" for task, what in sample if results[task.name] != 0]
    assert not failed, "\n\n".join(failed)


CLI_CASES = [
    ("markup in a value echoed back", "base_model", "./[/x]"),
    ("a lone surrogate in task.yaml", "data.system_prompt", "\ud800"),
    ("a non-UTF-8 byte in the data", None, None),
]


@pytest.mark.parametrize("case, key, value", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_real_cli_answers_a_bad_input_with_an_error_or_ok_never_a_traceback(local_project, case, key, value):
    from tests.conftest import run_gpurun

    task = local_project / "tasks" / "demo"
    if key is None:
        data = (task / "data" / "train.jsonl").read_bytes()
        (task / "data" / "train.jsonl").write_bytes(data[:100] + b"\xe9" + data[100:])
    else:
        config = yaml.safe_load((task / "task.yaml").read_text())
        set_dotted(config, key, value)
        (task / "task.yaml").write_bytes(dump(config))
    result = run_gpurun(local_project, "validate", "tasks/demo")
    assert result.returncode in (0, 1), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    if result.returncode == 1:
        assert [line for line in result.stderr.splitlines() if line.startswith("Hint: ")], result.stderr
    if key == "base_model":
        assert "on ./[/x]" in result.stdout, result.stdout  # printed as written, not taken for markup
    if key is None:
        assert "data/train.jsonl:1: not valid utf-8: byte 0xe9 at column 101" in result.stderr, result.stderr
