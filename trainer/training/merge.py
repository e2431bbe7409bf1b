"""`python -m trainer merge RUN_DIR`: fold a run's LoRA adapter into its base model -> output/merged/.

The base model is loaded unquantized (a merge into 4-bit weights would lose the adapter's precision).
"""

import json
from pathlib import Path

from trainer.builtin.tiny import default_cache_dir
from trainer.rundir import OUTPUT_DIR, RUN_FILE
from trainer.task.loading import config_from_dict
from trainer.training.model import resolve_base_model, torch_dtype
from trainer.training.quiet import DEBUG_LOG, route_library_noise

MERGED_DIR = "merged"


def merge(run_dir: Path) -> int:
    run_dir = Path(run_dir).resolve()
    if run_dir.is_dir():  # the user reads our lines; "Loading weights" bars and warnings go beside train.log
        route_library_noise(run_dir / DEBUG_LOG)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = run_dir / OUTPUT_DIR
    if not (output / "adapter_config.json").is_file():
        print(f"error: no adapter in {output}: the run has not finished, or trained without LoRA", flush=True)
        return 1
    record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    config = config_from_dict(record["config"])
    base = resolve_base_model(config, default_cache_dir(fallback=run_dir.parent.parent / "cache" / "models"))
    print(f"merging {output} into {config.base_model} ({base})", flush=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(config))
    merged = PeftModel.from_pretrained(model, str(output)).merge_and_unload()
    target = output / MERGED_DIR
    merged.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(output)).save_pretrained(str(target))
    print(f"merged model written to {target}", flush=True)
    return 0
