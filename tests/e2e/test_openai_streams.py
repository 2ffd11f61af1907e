"""Streams and token billing on the demo gateway's LLM.

A stream the client cuts off is billed for what was generated, and nothing more; a finished stream is billed
exactly the usage its last chunk reported; an OIP call to the LLM is billed the tokens its own tokenizer counted
(input and output), not the gateway's estimate.
"""

from __future__ import annotations

import httpx
import orjson
from tests.e2e.conftest import Gateway

LLM = "smollm2-135m-instruct"
LONG_ANSWER = [{"role": "user", "content": "Write a long story about a dragon, a knight and a village."}]


def _usage_of(gateway: Gateway, key: str) -> dict[str, int]:
    gateway.cli.run("meter", "--once")
    doc = httpx.get(f"{gateway.url}/api/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    return {m["model"]: (m["events"], m["quantity"]) for m in doc["models"]}  # type: ignore[misc]


def _stream(gateway: Gateway, key: str, body: dict[str, object]) -> httpx.Response:
    client = httpx.Client(timeout=120)
    request = client.build_request(
        "POST", f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body
    )
    return client.send(request, stream=True)


def test_a_cut_off_stream_is_billed_for_what_was_generated_only(gateway: Gateway) -> None:
    key = gateway.cli.new_consumer("stream-cutter")
    body = {"model": LLM, "messages": LONG_ANSWER, "max_tokens": 300, "temperature": 0, "stream": True}
    response = _stream(gateway, key, body)
    assert response.status_code == 200
    assert response.headers["x-modelmarket-route"].startswith(LLM)
    seen = 0
    for line in response.iter_lines():
        if line.startswith("data: {") and orjson.loads(line[6:])["choices"]:
            seen += 1
            if seen == 3:
                break
    response.close()  # the client hangs up after three chunks

    # A finished call of the same prompt tells how many prompt tokens it has.
    full = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": LLM, "messages": LONG_ANSWER, "max_tokens": 1, "temperature": 0},
        timeout=120,
    ).json()
    prompt = full["usage"]["prompt_tokens"]
    events, tokens = _usage_of(gateway, key)[LLM]
    assert events == 2
    cut_off_tokens = tokens - full["usage"]["total_tokens"]
    # The cut-off call: its prompt plus the few tokens generated before the hang-up was noticed; far from the
    # 300 it asked for (the runner stops at the next token once the connection is gone).
    assert prompt + 3 <= cut_off_tokens <= prompt + 20, (prompt, cut_off_tokens)


def test_a_finished_stream_is_billed_the_usage_it_reported(gateway: Gateway) -> None:
    key = gateway.cli.new_consumer("stream-finisher")
    body = {
        "model": LLM,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = _stream(gateway, key, body)
    chunks = [orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    response.close()
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] >= 1
    assert last["x_modelmarket"]["request_id"] == response.headers["x-request-id"]
    assert _usage_of(gateway, key)[LLM] == (1, last["usage"]["total_tokens"])


def test_an_oip_call_to_the_llm_is_billed_by_the_models_own_tokenizer(gateway: Gateway) -> None:
    key = gateway.cli.new_consumer("oip-llm")
    request = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Say hi."]}],
        "parameters": {"max_tokens": 5, "temperature": 0},
    }
    answer = httpx.post(
        f"{gateway.url}/v2/models/{LLM}/infer", headers={"Authorization": f"Bearer {key}"}, json=request, timeout=120
    )
    assert answer.status_code == 200, answer.text
    reply = answer.json()["outputs"][0]["data"][0]
    assert reply
    # The same turn over /v1 reports the model's own counts; the OIP call was billed exactly those.
    chat = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": LLM, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5, "temperature": 0},
        timeout=120,
    ).json()
    events, tokens = _usage_of(gateway, key)[LLM]
    assert events == 2
    assert tokens == 2 * chat["usage"]["total_tokens"]  # same prompt, same greedy reply: same counts
    # The gateway's own regex count of "Say hi." would be 3 tokens: the prompt template alone is more.
    assert chat["usage"]["prompt_tokens"] > 10
