"""SFT data tokenized once, by the token checks, and kept on the host by content for the next run of the same data.

The checks (trainer/training/tokens.py) tokenize every row to see what it trains on; the dataset handed to TRL is built
from those very tokens (input ids, and labels at -100 where nothing is trained, truncated to max_length), so
TRL tokenizes nothing and maps nothing. The rows the checks drop (every trained token beyond max_length, with
data.drop_long) are in neither dataset, and are taken out of the splits too. It is saved under
`<workdir>/cache/tokenized/<key>/`: a second run or a `--resume` of the same data loads it instead of tokenizing
again. The key hashes everything the tokens depend
on: the rows as read (which stand for the data files' bytes, their file:line, and every data option: format,
columns, system prompt, split, fraction, shuffle and seed; hub data too), the tokenizer (vocabulary, merges,
special tokens, chat template and the training template used for the mask), task, max_length, packing,
padding_free, the library versions that tokenize, and the source of the code that masks. A cache is written to
a temporary folder and renamed into place once complete, so a run killed while writing leaves nothing that a
later run would trust.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.task.loading import config_to_dict
from trainer.task.problems import Problem
from trainer.task.schema import TaskConfig

FORMAT = 1  # bump when what a cache folder holds changes
META = "meta.json"  # written last inside the temporary folder: a folder without it is not a cache
SPLITS = ("train", "eval")


@dataclass
class Tokenized:
    """The training and evaluation datasets (input_ids, labels), ready for TRL as they are."""

    train: object
    eval: object | None
    rows: int
    reused: bool
    truncated: bool  # labels cut to max_length (always, except with packing, which TRL chunks itself)


def cache_key(config: TaskConfig, tokenizer, splits: dict, task_dir: Path) -> str:
    """Hex digest of everything the tokenized rows depend on (see the module docstring)."""
    import tokenizers
    import transformers
    import trl

    import trainer.task
    from trainer.training import tokens

    digest = hashlib.sha256()

    def part(name: str, value: bytes | str) -> None:
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        digest.update(f"{name}\0{len(raw)}\0".encode())  # length-prefixed: no two inputs hash alike by shifting
        digest.update(raw)

    part("format", str(FORMAT))
    part("versions", f"{transformers.__version__} {tokenizers.__version__} {trl.__version__}")
    # The code that reads rows (every module of trainer/task/) and masks them: a fixed bug must not be served from
    # the cache, whichever of those modules it was in.
    readers = sorted(Path(trainer.task.__file__).parent.glob("*.py"))
    for path in [*readers, Path(tokens.__file__)]:
        part(path.name, path.read_bytes())
    t = config.training
    options = {"task": config.task, "max_length": t.max_length, "packing": t.packing, "padding_free": t.padding_free}
    part("options", json.dumps(options, sort_keys=True))
    part("tokenizer", tokenizer_fingerprint(tokenizer))
    # The rows come from the files' bytes by the code hashed above and the data options (format, columns, system
    # prompt, encoding, split, fraction, shuffle, seed): hashing those is hashing the rows, at disk speed
    # (hashing the parsed rows themselves costs a JSON dump per row). Hub data has no bytes here: its rows, then.
    data_options = {k: v for k, v in config_to_dict(config)["data"].items() if k != "test"}
    part("data", json.dumps(data_options, sort_keys=True, ensure_ascii=False))
    sources = [*config.data.train, *config.data.eval]
    if any(name.startswith("hub:") for name in sources):
        for split in SPLITS:
            part("split", split)
            for row in splits[split]:
                part("row", json.dumps(row, sort_keys=True, ensure_ascii=False, default=str))
    else:
        for name in sources:
            part("file", name)
            file_digest = hashlib.sha256()
            with (task_dir / name).open("rb") as fh:
                while block := fh.read(1 << 20):
                    file_digest.update(block)
            part("bytes", file_digest.digest())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer as it tokenizes: its full serialisation when it has one (vocabulary, merges, normaliser,
    added tokens), else its vocabulary; its special tokens; its chat template and the training template."""
    from trainer.training.tokens import training_chat_template

    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    try:
        template = training_chat_template(tokenizer) if tokenizer.chat_template else None
    except ValueError as exc:  # the checks say so; the key only needs to differ
        template = f"error: {exc}"
    specials = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "chat_template": tokenizer.chat_template,
        "training_template": template,
        "padding_side": tokenizer.padding_side,
    }
    return body + json.dumps(specials, sort_keys=True, ensure_ascii=False, default=str)


class TokenColumns:
    """(input ids, mask) pairs, appended one at a time (token_report's `pairs`), kept as Arrow int32 columns in
    chunks: 100k rows of 1000 tokens as Python lists of ints would take gigabytes. Labels are the ids, -100 where
    the mask is 0; both cut to `cut` tokens, as TRL's keep_start truncation cuts them (None: not cut)."""

    CHUNK = 1000

    def __init__(self, cut: int | None):
        self.cut = slice(None, cut)
        self.ids: list[list[int]] = []
        self.labels: list[list[int]] = []
        self.chunks: list = []

    def append(self, pair: tuple[list[int], list[int]]) -> None:
        ids, mask = pair[0][self.cut], pair[1][self.cut]
        self.ids.append(ids)
        self.labels.append([t if m else -100 for t, m in zip(ids, mask, strict=True)])
        if len(self.ids) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.ids:
            column = pa.list_(pa.int32())
            arrays = [pa.array(self.ids, type=column), pa.array(self.labels, type=column)]
            self.chunks.append(pa.Table.from_arrays(arrays, names=["input_ids", "labels"]))
            self.ids, self.labels = [], []

    def datasets(self, split_at: int) -> tuple[object, object | None]:
        """The rows before `split_at` (train) and after it (eval, None when there are none) as Datasets."""
        import pyarrow as pa
        from datasets import Dataset
        from datasets.table import InMemoryTable

        self._flush()
        schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
        table = pa.concat_tables(self.chunks) if self.chunks else schema.empty_table()
        train = Dataset(InMemoryTable(table.slice(0, split_at)))
        rest = table.num_rows - split_at
        return train, Dataset(InMemoryTable(table.slice(split_at))) if rest else None

    def tokenized(self, split_at: int) -> Tokenized:
        """Every row appended so far, freshly tokenized: those before `split_at` train, the rest evaluate."""
        train, evaluation = self.datasets(split_at)
        rows = len(train) + (len(evaluation) if evaluation is not None else 0)
        return Tokenized(train, evaluation, rows, reused=False, truncated=self.cut.stop is not None)


def label_cut(config: TaskConfig) -> int | None:
    """Where the rows are cut: at max_length, except with packing, which TRL chunks into sequences itself."""
    return None if config.training.packing else config.training.max_length


def tokenize_rows(config: TaskConfig, tokenizer, rows: list[dict], train_rows: int) -> Tokenized:
    """The rows tokenized as the checks tokenize them, without the checks (a test, a notebook): the first
    `train_rows` train, the rest evaluate. As the checks do, a row of which max_length cuts off every trained token
    is left out (data.drop_long)."""
    from trainer.training.tokens import mask_of, training_chat_template

    chat = any("messages" in r or isinstance(r.get("completion"), list) for r in rows)
    template = training_chat_template(tokenizer) if chat else None
    columns = TokenColumns(label_cut(config))
    max_length, kept_train = config.training.max_length, train_rows
    for index, row in enumerate(rows):
        ids, mask = mask_of(row, tokenizer, template)
        if config.data.drop_long and any(mask) and not any(mask[:max_length]):
            if index < train_rows:
                kept_train -= 1
            continue
        columns.append((ids, mask))
    return columns.tokenized(kept_train)


def checked_tokens(
    config: TaskConfig,
    tokenizer,
    splits: dict,
    task_dir: Path,
    cache_root: Path,
    say: Callable[[str], None] = print,
) -> tuple[list[Problem], Tokenized | None]:
    """The token checks' problems, and (when there are none) the tokenized train / eval datasets, from the cache
    under `cache_root` when the same data was tokenized before, else tokenized now and cached.

    The rows the checks drop (data.drop_long) are said, and taken out of `splits["train"]` and `splits["eval"]`
    (in place: what trains, evaluates and samples afterwards is the rows the datasets hold)."""
    from trainer.training.tokens import token_report

    key = cache_key(config, tokenizer, splits, task_dir)
    cached = _load(cache_root / key)
    if cached is not None:
        meta, tokenized = cached
        say(meta["summary"])
        if meta.get("dropped"):
            say(meta["dropped_notice"])
            _drop_rows(splits, meta["dropped"])
        say(f"tokenized data: reused from cache ({tokenized.rows} rows)")
        return [], tokenized

    columns = TokenColumns(label_cut(config))
    train_rows = len(splits["train"])
    report = token_report(splits["train"] + splits["eval"], tokenizer, config, pairs=columns, train_rows=train_rows)
    summary = report.summary(config.training.max_length)
    if summary:
        say(summary)
    if report.problems:
        return report.problems, None
    dropped = {"dropped": report.dropped, "dropped_notice": report.dropped_notice(config.training.max_length)}
    if report.dropped:
        say(dropped["dropped_notice"])
        _drop_rows(splits, report.dropped)
    tokenized = columns.tokenized(len(splits["train"]))
    where = _save(cache_root, key, tokenized, summary, dropped)
    say(f"tokenized data: {tokenized.rows} rows, " + (f"cached in {where}" if isinstance(where, Path) else where))
    return [], tokenized


def _drop_rows(splits: dict, dropped: list[int]) -> None:
    """Take the rows at `dropped` (indices into train + eval, in that order) out of splits["train"] and ["eval"]."""
    gone = set(dropped)
    train = len(splits["train"])
    splits["train"] = [row for i, row in enumerate(splits["train"]) if i not in gone]
    splits["eval"] = [row for i, row in enumerate(splits["eval"], train) if i not in gone]


def _load(folder: Path) -> tuple[dict, Tokenized] | None:
    """The cache in `folder`, or None when there is none or it is not whole (then it is tokenized again)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            return None
        from datasets import load_from_disk

        loaded = {split: load_from_disk(str(folder / split)) for split in meta["splits"]}
    except Exception:  # noqa: BLE001 - whatever is wrong with a cache, tokenizing again is the answer
        return None
    rows = sum(len(d) for d in loaded.values())
    if rows != meta.get("rows"):
        return None
    tokenized = Tokenized(loaded["train"], loaded.get("eval"), rows, reused=True, truncated=meta["truncated"])
    return meta, tokenized


def _save(cache_root: Path, key: str, tokenized: Tokenized, summary: str, dropped: dict | None = None) -> Path | str:
    """Write the cache whole into a temporary folder, then rename it into place. A failure to cache (a full
    disk, a read-only workdir) costs the next run a tokenization, never this run: it is said, not raised."""
    import datasets

    datasets.disable_progress_bars()  # "Saving the dataset" bars are noise in train.log
    final = cache_root / key
    staging = cache_root / f".tmp-{key}-{os.getpid()}"
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        splits = {"train": tokenized.train, "eval": tokenized.eval}
        written = [name for name, ds in splits.items() if ds is not None]
        for name in written:
            splits[name].save_to_disk(str(staging / name))
        meta = {
            "format": FORMAT,
            "rows": tokenized.rows,
            "splits": written,
            "truncated": tokenized.truncated,
            "summary": summary,
            **(dropped or {}),  # the rows the checks dropped (indices into train + eval), and what was said of them
        }
        (staging / META).write_text(json.dumps(meta), encoding="utf-8")  # last: it makes the folder a cache
        if final.exists():  # a folder without a whole cache in it (we did not load it): replace it
            if _load(final) is not None:  # another run wrote the same cache meanwhile
                shutil.rmtree(staging, ignore_errors=True)
                return final
            shutil.rmtree(final)
        os.rename(staging, final)
        return final
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        return f"not cached ({exc.strerror or exc})"
