"""`gpurun export --gguf`: the adapter merged into its base and written as a GGUF file on the host, read back by
transformers and held against the merged model before it is called done; `pull --gguf` brings it home (issue 16
item 4)."""

import json

from tests.conftest import run_gpurun
from tests.test_lifecycle import latest_run_id


def test_a_run_exports_a_verified_q8_0_gguf_that_pull_brings_home(local_project):
    assert run_gpurun(local_project, "train", "tasks/demo").returncode == 0
    assert run_gpurun(local_project, "logs", "-f").returncode == 0
    run_id = latest_run_id(local_project)

    export = run_gpurun(local_project, "export", run_id, "--gguf", "q8_0", "--json")
    assert export.returncode == 0, export.stdout + export.stderr
    said = json.loads(export.stdout)
    assert said["top1_equal"] is True and said["max_logit_diff"] < 0.5 and said["type"] == "q8_0", said
    assert said["gguf"].endswith(f"/output/gguf/{run_id}-q8_0.gguf")

    plain_pull = run_gpurun(local_project, "pull")
    assert plain_pull.returncode == 0
    pulled = local_project / "tasks" / "demo" / "runs" / run_id
    assert not (pulled / "gguf").exists()  # big: only when asked
    with_gguf = run_gpurun(local_project, "pull", "--gguf")
    assert with_gguf.returncode == 0, with_gguf.stderr
    path = pulled / "gguf" / f"{run_id}-q8_0.gguf"
    assert f"gguf: tasks/demo/runs/{run_id}/gguf/{run_id}-q8_0.gguf (" in with_gguf.stdout, with_gguf.stdout
    assert path.stat().st_size == said["bytes"]

    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: field for name, field in reader.fields.items()}
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert arch == "qwen2" and "<|im_start|>" in template
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"

    kquant = run_gpurun(local_project, "export", run_id, "--gguf", "q4_k_m")
    assert kquant.returncode == 1 and "llama-quantize" in kquant.stderr and "Traceback" not in kquant.stderr
