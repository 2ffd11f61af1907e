"""The official ``openai`` SDK, unchanged, against the demo gateway (the catalogue ``make demo`` serves).

Lists models, chats with the local LLM (plain and streamed with usage), embeds, transcribes the demo WAV, and
gets the SDK's own exception types for an unknown model and a bad key. The invoice shows the LLM's input and
output tokens at their own prices.
"""

from __future__ import annotations

import base64
import math
import struct
from fractions import Fraction

import httpx
import openai
import pytest
from tests.e2e.conftest import Cli, Gateway, billing_period_for_test

LLM = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
INPUT_PRICE = Fraction("0.0002")  # per 1k input tokens, as the demo package quotes it
OUTPUT_PRICE = Fraction("0.0006")


@pytest.fixture(scope="module")
def consumer(demo_cli: Cli) -> tuple[str, str]:
    name = "sdk-consumer"
    return name, demo_cli.new_consumer(name)


@pytest.fixture(scope="module")
def client(gateway: Gateway, consumer: tuple[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=consumer[1], max_retries=0, timeout=120)


def test_models_lists_the_llm_and_the_embedder(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {LLM, EMBEDDER, "speech-to-text"} <= ids
    assert "digits" not in ids  # an image classifier has no OpenAI endpoint: it is served over /v2 only
    assert client.models.retrieve(LLM).id == LLM


def test_chat_plain_answers_and_reports_usage(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=LLM,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=8,
        temperature=0,
        seed=7,
    )
    answer = raw.parse()
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The headers say what was billed: IU = tokens / 1000, cost at the input and output prices.
    assert raw.headers["x-modelmarket-route"].startswith(f"{LLM}@")
    assert Fraction(raw.headers["x-modelmarket-iu"]) == Fraction(usage.total_tokens, 1000)
    amount, currency = raw.headers["x-modelmarket-cost"].split()
    expected = (usage.prompt_tokens * INPUT_PRICE + usage.completion_tokens * OUTPUT_PRICE) / 1000
    assert (Fraction(amount), currency) == (expected, "USD")
    assert raw.headers["x-request-id"].startswith("req_")


def test_the_same_seed_gives_the_same_text(client: openai.OpenAI) -> None:
    def ask() -> str:
        answer = client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=6, temperature=0.9, seed=42
        )
        return answer.choices[0].message.content or ""

    assert ask() == ask()


def test_chat_streamed_with_usage_in_the_last_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
            assert chunk.usage is None  # only the last chunk carries usage
        else:
            usage = chunk.usage
        assert chunk.model == LLM
    assert "".join(texts)
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens >= 1 and usage.prompt_tokens > 3


def test_text_completion(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=LLM, prompt="The sky is", max_tokens=5, temperature=0)
    assert answer.choices[0].text
    assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 5


def test_embeddings_floats_and_base64(client: openai.OpenAI) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    answer = client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    vectors = [d.embedding for d in answer.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    assert answer.usage.prompt_tokens > 10
    # base64 carries the same little-endian float32 values (the SDK decodes it itself when asked for floats;
    # here the raw form is read to see it).
    raw = httpx.post(
        str(client.base_url) + "embeddings",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": EMBEDDER, "input": texts[0], "encoding_format": "base64"},
        timeout=60,
    )
    assert raw.status_code == 200, raw.text
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    decoded = struct.unpack("<384f", packed)
    assert max(abs(a - b) for a, b in zip(decoded, vectors[0], strict=True)) < 1e-6


def test_transcription_of_the_demo_wav(client: openai.OpenAI, demo_cli: Cli) -> None:
    wav = demo_cli.home / "demo" / "examples" / "hello.wav"
    with wav.open("rb") as fh:
        answer = client.audio.transcriptions.create(model="speech-to-text", file=fh)
    assert "hello" in answer.text.lower()


def test_unknown_model_and_bad_key_raise_the_sdks_own_errors(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in str(missing.value)
    bad = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="mm_not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "hi"}], n=2)
    assert wrong.value.body["param"] == "n"  # type: ignore[index]


def test_the_invoice_shows_input_and_output_tokens_at_their_prices(gateway: Gateway) -> None:
    period = billing_period_for_test()
    cli = gateway.cli
    key = cli.new_consumer("sdk-invoiced")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=120)
    usage = [
        client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": f"Say {word}."}], max_tokens=4, temperature=0
        ).usage
        for word in ("yes", "no")
    ]
    prompt = sum(u.prompt_tokens for u in usage if u)
    completion = sum(u.completion_tokens for u in usage if u)
    cli.run("meter", "--once")
    (invoice,) = [i for i in cli.json("invoices", "list", "sdk-invoiced")["invoices"] if i["period"] == period]
    (line,) = [line for line in invoice["lines"] if line.get("model") == LLM]
    parts = {part["direction"]: part for part in line["tokens"]}
    assert Fraction(parts["input"]["quantity_iu"]) == Fraction(prompt, 1000)
    assert Fraction(parts["output"]["quantity_iu"]) == Fraction(completion, 1000)
    assert (Fraction(parts["input"]["price_per_iu"]), Fraction(parts["output"]["price_per_iu"])) == (
        INPUT_PRICE,
        OUTPUT_PRICE,
    )
    assert Fraction(parts["input"]["amount_exact"]) == prompt * INPUT_PRICE / 1000
    assert Fraction(parts["output"]["amount_exact"]) == completion * OUTPUT_PRICE / 1000
    assert Fraction(line["amount_exact"]) == (prompt * INPUT_PRICE + completion * OUTPUT_PRICE) / 1000
    text = cli.run("invoices", "show", invoice["id"]).stdout
    assert "input tokens at 0.0002 per 1k" in text and "output tokens at 0.0006 per 1k" in text
