"""builtin:tiny is built as a small base model that already speaks the tool-call format, as real ones do.

Its build pretrains on generic requests (weather, alarms, email, ...), so that LoRA on a task's own functions has
the format and the copying to build on; a random tiny model only learned to repeat <tool_call>.
"""

from trainer.builtin.corpus import GENERIC_FUNCTIONS
from trainer.builtin.tiny import ensure_tiny
from trainer.training.evaluate import generate, parse_tool_calls
from trainer.training.model import load_tokenizer

ALARM = {
    "type": "function",
    "function": {"name": "set_alarm", "parameters": {"type": "object", "properties": {"time": {"type": "string"}}}},
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "date": {"type": "string", "format": "date"}},
        },
    },
}
# Worded unlike every request of the pretraining corpus (the nearest: "Wake me up at {time}."), at a time it never saw.
REQUEST = "Please wake me at 06:40."


def test_the_built_tiny_answers_a_request_it_never_saw_with_a_tool_call_to_one_of_the_given_functions(model_cache):
    from transformers import AutoModelForCausalLM

    base = str(ensure_tiny())
    model = AutoModelForCausalLM.from_pretrained(base)
    reply = generate(model, load_tokenizer(base), [{"role": "user", "content": REQUEST}], 64, tools=[ALARM, WEATHER])

    assert reply.startswith("<tool_call>\n{"), reply
    calls = parse_tool_calls(reply)
    assert calls and isinstance(calls[0]["arguments"], dict), reply
    assert calls[0]["name"] in ("set_alarm", "get_weather"), reply


def test_the_pretraining_corpus_holds_none_of_the_hr_functions_the_demo_must_learn():
    hr = {"get_leave_balance", "request_leave", "cancel_leave", "query_salary", "get_payslip", "update_address"}
    hr |= {"list_holidays", "get_manager", "submit_expense"}
    assert len(GENERIC_FUNCTIONS) > 20
    assert not hr & set(GENERIC_FUNCTIONS)


def test_the_pretraining_chats_never_word_a_request_as_the_hr_task_does():
    import json
    import random

    from trainer.builtin.corpus import generic_chat

    words = ["leave", "salary", "payslip", "expense", "holiday", "address", "manager", "day off", "hr "]
    words += ["假", "工资", "报销", "住址", "经理", "节假日", "薪"]
    rng = random.Random(0)
    for _ in range(3000):
        text = json.dumps(generic_chat(rng, p_echo=0.2, max_tools=9), ensure_ascii=False).lower()
        assert not [w for w in words if w in text], text
