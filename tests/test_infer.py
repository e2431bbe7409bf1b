"""`gpurun infer`: a run's adapter answers on its host, and here from the pulled run (issue 16 item 3)."""

import json

from tests.conftest import run_gpurun
from tests.test_lifecycle import latest_run_id

QUESTION = "How many vacation days do I have left?"


def test_a_run_answers_a_prompt_a_file_of_them_and_from_the_pulled_copy(local_project, tmp_path):
    assert run_gpurun(local_project, "train", "tasks/demo").returncode == 0
    assert run_gpurun(local_project, "logs", "-f").returncode == 0
    run_id = latest_run_id(local_project)

    one = run_gpurun(local_project, "infer", run_id, QUESTION, "--max-new-tokens", "24", "--json")
    assert one.returncode == 0, one.stderr
    [answer] = json.loads(one.stdout)
    assert answer["prompt"] == QUESTION and answer["reply"] and isinstance(answer["calls"], list), answer
    assert answer["adapter"].endswith("/output")
    tools = json.loads((local_project / "tasks/demo/data/train.jsonl").read_text().splitlines()[0])["tools"]
    offered = {tool["function"]["name"] for tool in tools}
    assert answer["unknown"] == [c["name"] for c in answer["calls"] if c["name"] not in offered], answer
    shown = run_gpurun(local_project, "infer", run_id, QUESTION, "--max-new-tokens", "24")
    assert shown.returncode == 0 and "call: " in shown.stdout, shown.stdout + shown.stderr

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": QUESTION}, {"messages": [{"role": "user", "content": "What is my salary for 2026-03?"}]}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    many = run_gpurun(local_project, "infer", run_id, "--file", str(prompts), "--max-new-tokens", "8", "--json")
    assert [a["prompt"] for a in json.loads(many.stdout)] == [QUESTION, "What is my salary for 2026-03?"]

    assert run_gpurun(local_project, "pull").returncode == 0
    here = run_gpurun(local_project, "infer", run_id, QUESTION, "--local", "--max-new-tokens", "24", "--json")
    assert here.returncode == 0, here.stderr
    [local_answer] = json.loads(here.stdout)
    assert local_answer["reply"] == answer["reply"]  # the same adapter, greedy: the same words


def test_infer_refuses_what_it_cannot_ask_in_one_line(local_project, tmp_path):
    nothing = run_gpurun(local_project, "infer", "nosuchrun", QUESTION)
    assert nothing.returncode == 1 and "Error:" in nothing.stderr and "Traceback" not in nothing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\nnot json\n')
    refused = run_gpurun(local_project, "infer", "whatever", "--file", str(bad))
    assert refused.returncode == 1 and "bad.jsonl:2: not JSON" in refused.stderr, refused.stderr
    both = run_gpurun(local_project, "infer", "whatever", QUESTION, "--file", str(bad))
    assert "give a prompt or --file, not both" in both.stderr


def test_a_call_to_a_function_the_task_does_not_offer_is_said_so():
    from rich.console import Console

    from launcher.render import infer_table

    answer = {"prompt": "q", "reply": "<tool_call>...", "calls": [{"name": "get_leave", "arguments": {}}]}
    console = Console(width=200, record=True)
    console.print(infer_table([{**answer, "unknown": ["get_leave"]}]))
    console.print(infer_table([{**answer, "calls": [{"name": "get_leave_balance", "arguments": {}}], "unknown": []}]))
    shown = console.export_text()
    assert "call: get_leave({}) - not one of the task's tools" in shown, shown
    assert "call: get_leave_balance({})\n" in shown, shown
