"""The commands about a run's results: `infer` (ask its adapter) and `compare` (runs side by side). Registered on
the `gpurun` group by launcher/cli.py; thin as every command: parse, call one function, render."""

import click

from launcher.clibase import JSON_HELP, emit_json, json_mode, open_named_run, project_root
from launcher.clibase import console as out_console


@click.command()
@click.argument("run")
@click.argument("prompt", required=False)
@click.option("--file", "file", metavar="PROMPTS", help="Ask each prompt of a .jsonl (prompt or chat rows) or .txt.")
@click.option("--local", is_flag=True, help="Here, from the pulled run (needs the training stack and the base model).")
@click.option("--max-new-tokens", default=128, show_default=True, help="Longest reply.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def infer(run, prompt, file, local, max_new_tokens, as_json):
    """Ask a run's adapter: the reply and the tool call parsed from it, with the task's template and tools.

    On the run's host by default (its base model is there); a stopped run answers from its latest checkpoint.

    \b
    Example:
      gpurun infer hr-20260101-120000-ab12 "How many vacation days do I have left?"
      gpurun infer hr-20260101-120000-ab12 --file prompts.jsonl
    """
    from launcher.infer import ask, read_prompts
    from launcher.render import infer_table

    json_mode(as_json)
    prompts = read_prompts(prompt, file)
    opened = open_named_run(run)
    where = "here" if local else opened.record.host
    with out_console(stderr=True).status(f"asking {opened.record.run_id} on {where}…"):
        answers = ask(opened, prompts, max_new_tokens, local)
    if as_json:
        emit_json(answers)
        return
    out_console().print(infer_table(answers))


@click.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN]...")
@click.option("--task", help="Compare the latest runs of this task (with --last).")
@click.option("--last", default=5, show_default=True, help="How many of the latest runs, without RUNs named.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def compare(run_ids, task, last, as_json):
    """Put runs side by side: the config keys that differ, steps, losses, eval-suite scores, time, peak memory.

    Runs may be on different hosts; each host is asked once.

    \b
    Example:
      gpurun compare hr-20260101-120000-ab12 hr-20260102-090000-cd34
      gpurun compare --task hr --last 3
    """
    from launcher.compare import differing_keys, runs_to_compare, summaries
    from launcher.render import compare_table
    from launcher.runs import History, refresh_runs

    json_mode(as_json)
    root = project_root()
    history = History(root)
    refresh_runs(root, history, 500, lambda text: out_console(stderr=True).print(f"[yellow]warning:[/] {text}"))
    rows = summaries(root, runs_to_compare(history, run_ids, task, last))
    differing = differing_keys(rows)
    if as_json:
        emit_json({"differing": differing, "runs": rows})
        return
    console = out_console()
    console.print(compare_table(rows, differing, console.width))


@click.command()
@click.argument("run", required=False)
@click.option("--gguf", "kind", required=True, metavar="TYPE", help="f16, bf16, q8_0 or q4_0.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def export(run, kind, as_json):
    """Write the run's adapter, merged into its base, as one GGUF file for llama.cpp, verified.

    On the run's host: output/gguf/RUN-TYPE.gguf, with the tokenizer and chat template inside. Verified before
    it is called done: transformers reads the file back and its next-token choices on a few prompts are the
    merged model's. Bring it home with `gpurun pull RUN --gguf`.

    \b
    Example:
      gpurun export hr-20260101-120000-ab12 --gguf q8_0
    """
    from launcher.hostcalls import export_run
    from launcher.sync import push_trainer

    json_mode(as_json)
    opened = open_named_run(run)
    record, remote = opened.record, opened.remote
    with out_console(stderr=True).status(f"merging and writing {kind} GGUF on {record.host}…"):
        said = export_run(remote, push_trainer(remote), record.run_id, kind.lower())
    if as_json:
        emit_json(said)
        return
    console = out_console()
    size = said["bytes"] / 2**20
    console.print(f"wrote {said['gguf']} on {record.host} ({size:.1f} MB, {said['type']})")
    verdict = "the same" if said["top1_equal"] else "not all the same (4-bit rounding)"
    console.print(
        f"verified: transformers reads it back; next-token choices on {said['prompts']} prompts are {verdict} "
        f"as the merged model's (largest logit difference {said['max_logit_diff']})"
    )
    console.print(f"bring it home: gpurun pull {record.run_id} --gguf")


@click.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN]...")
@click.option("--task", help="Plot the latest runs of this task (with --last).")
@click.option("--last", default=1, show_default=True, help="How many of the latest runs, without RUNs named.")
@click.option("-o", "--out", default="loss.png", show_default=True, help="The PNG to write.")
def plot(run_ids, task, last, out):
    """Draw train and eval loss and the learning rate over steps into a PNG, runs overlaid, alarms marked.

    Each line is labelled with the run's experiment and --set values; seed 000's health alarms (rising,
    oscillating, plateau, overfitting) are marked at the step they fired. Needs matplotlib (the [plot] extra).

    \b
    Example:
      gpurun plot --task hr --last 3 -o hr.png
    """
    from pathlib import Path

    from launcher.compare import runs_to_compare, summaries
    from launcher.plot import write_plot
    from launcher.runs import History

    root = project_root()
    records = runs_to_compare(History(root), run_ids, task, last, least=1)
    written = write_plot(summaries(root, records), Path(out))
    out_console().print(f"wrote {written} ({len(records)} run{'s' if len(records) > 1 else ''})")
