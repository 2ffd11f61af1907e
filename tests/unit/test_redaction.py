"""Redaction: every entity a policy may name is replaced, the text around it kept; no NLP model is ever loaded and
nothing is fetched; the bounds hold; the gateway's request rewriting keeps everything but the replaced text."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.core.pii import PII_ENTITIES
from modelmarket.core.tensors import Tensor, bytes_tensor
from modelmarket.gateway.privacy import (
    PrivacyGuard,
    _openai_replaced,
    _openai_texts,
    describe_inputs,
    encode_request,
)
from modelmarket.privacy import PrivacyPolicies, RedactionTimedOut, Redactor, RedactorCache, check_entities
from modelmarket.privacy.redaction import OVERLAP_CHARS, WINDOW_CHARS
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import BodyTooLarge

SAMPLES = {
    "EMAIL_ADDRESS": ("write to {}", "jane.doe@example.com"),
    "PHONE_NUMBER": ("call {}", "+1 212-555-0187"),
    "CREDIT_CARD": ("card {}", "4111 1111 1111 1111"),
    "IBAN_CODE": ("IBAN {}", "DE89 3704 0044 0532 0130 00"),
    "US_SSN": ("my social security number is {}", "536-22-8726"),
    "IP_ADDRESS": ("from {}", "203.0.113.42"),
    "CRYPTO": ("wallet {}", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"),
    "URL": ("see {}", "https://www.example.com/orders"),
    "US_BANK_NUMBER": ("my bank account number is {}", "945500321456"),
    "US_ITIN": ("my ITIN is {}", "912-70-1234"),
    "US_PASSPORT": ("my passport number is {}", "912803456"),
    "US_DRIVER_LICENSE": ("my driver license is {}", "H12345678"),
    "UK_NHS": ("NHS number {}", "401 023 2137"),
    "MEDICAL_LICENSE": ("DEA number {}", "BB1388568"),
}
EMAIL, PHONE, CARD = SAMPLES["EMAIL_ADDRESS"][1], SAMPLES["PHONE_NUMBER"][1], SAMPLES["CREDIT_CARD"][1]
THREE = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD")
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00\xff\xfe"


@pytest.fixture(scope="module")
def redactors() -> RedactorCache:
    return RedactorCache()


def test_every_entity_a_policy_may_name_has_a_sample() -> None:
    assert set(SAMPLES) == set(PII_ENTITIES)


@pytest.mark.parametrize("entity", PII_ENTITIES)
def test_each_entity_is_replaced_and_the_text_around_it_kept(redactors: RedactorCache, entity: str) -> None:
    template, value = SAMPLES[entity]
    text = f"Dear team, {template.format(value)} - thanks!"
    done = redactors.get([entity]).redact(text)
    assert done.text == f"Dear team, {template.format(f'<{entity}>')} - thanks!"
    assert dict(done.counts) == {entity: 1}


def test_only_the_named_entities_are_replaced(redactors: RedactorCache) -> None:
    text = f"mail {EMAIL}, call {PHONE}, card {CARD}"
    assert redactors.get(["EMAIL_ADDRESS"]).redact(text).text == f"mail <EMAIL_ADDRESS>, call {PHONE}, card {CARD}"
    both = redactors.get(["PHONE_NUMBER", "CREDIT_CARD"]).redact(text)
    assert both.text == f"mail {EMAIL}, call <PHONE_NUMBER>, card <CREDIT_CARD>"
    assert dict(both.counts) == {"PHONE_NUMBER": 1, "CREDIT_CARD": 1}


def test_text_without_personal_data_comes_back_unchanged(redactors: RedactorCache) -> None:
    done = redactors.get(PII_ENTITIES).redact("I loved the film, 10 out of 10, would watch again")
    assert not done.changed
    assert done.text == "I loved the film, 10 out of 10, would watch again"


def test_overlapping_findings_are_replaced_as_one(redactors: RedactorCache) -> None:
    # URL also matches the address's domain: the whole address goes, nothing of it is left behind
    done = redactors.get(["EMAIL_ADDRESS", "URL"]).redact(f"mail {EMAIL} now")
    assert done.text == "mail <EMAIL_ADDRESS> now"


def test_no_nlp_model_is_loaded_and_nothing_is_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh redactor of every entity is built and used with spaCy's model loader and every socket connection
    failing: it needs neither (the e-mail check reads tldextract's bundled suffix list)."""
    import spacy

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"spaCy was asked to load a model: {args}")

    def no_network(self: socket.socket, *args: Any) -> None:
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(spacy, "load", no_model)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    redactor = Redactor(PII_ENTITIES)
    assert redactor.redact(f"write to {EMAIL}").text == "write to <EMAIL_ADDRESS>"
    engine = redactor._analyzer.nlp_engine
    assert type(engine).__name__ == "NoOpNlpEngine"
    assert all(pipeline is None for pipeline in engine.nlp.values())  # no spaCy pipeline for any language
    assert not [m for m in sys.modules if m.startswith(("en_core_web", "spacy_transformers", "stanza"))]


def test_unknown_and_repeated_entities_are_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match=r"'SOCIAL'.*'EMAIL'"):
        check_entities(["SOCIAL", "EMAIL_ADDRESS", "EMAIL"])
    with pytest.raises(InvalidInput, match="'URL' is listed twice"):
        check_entities(["URL", "URL"])
    with pytest.raises(InvalidInput, match="'NAME'"):
        Redactor(["NAME"])


def test_an_entity_across_a_window_boundary_is_found_whole(redactors: RedactorCache) -> None:
    for offset in (WINDOW_CHARS - 10, WINDOW_CHARS - 1, WINDOW_CHARS, 2 * WINDOW_CHARS - 5):
        text = "a" * offset + f" {EMAIL} and {CARD} " + "b" * 50
        done = redactors.get(THREE).redact(text)
        assert EMAIL not in done.text and "jane" not in done.text and "example.com" not in done.text
        assert CARD not in done.text and "1111" not in done.text
        assert done.text.startswith("a" * offset + " <EMAIL_ADDRESS> and <CREDIT_CARD> ")


def test_a_long_text_with_many_matches_is_redacted_or_refused_within_the_deadline(redactors: RedactorCache) -> None:
    redactor = redactors.get(THREE)
    text = f"call {PHONE} or pay {CARD}; " * 20_000  # ~900,000 characters, 40,000 findings
    started = time.monotonic()
    with pytest.raises(RedactionTimedOut, match="longer than allowed"):
        redactor.redact(text, deadline=started + 0.5)
    assert time.monotonic() - started < 0.5 + 1.0  # stops within one window's work of the deadline
    small = text[: 20 * len(f"call {PHONE} or pay {CARD}; ")]
    done = redactor.redact(small, deadline=time.monotonic() + 30)
    assert dict(done.counts) == {"PHONE_NUMBER": 20, "CREDIT_CARD": 20}
    assert PHONE not in done.text and CARD not in done.text


def test_a_cut_prefix_never_ends_in_part_of_an_entity(redactors: RedactorCache) -> None:
    redactor = redactors.get(PII_ENTITIES)
    text = "x" * 95 + f" {EMAIL} " + "y" * 1000
    done = redactor.redact_prefix(text, 100)
    assert "jane" not in done.text and "example" not in done.text
    assert done.text == "x" * 95 + " <EMAIL_ADDRESS>…"
    assert redactor.redact_prefix("short " + EMAIL, 100).text == "short <EMAIL_ADDRESS>"
    assert len(redactor.redact_prefix("z" * 10_000, 100).text) == 101
    assert OVERLAP_CHARS >= 254  # the longest e-mail address is seen whole


def test_redactors_are_built_once_per_set_and_safe_to_share_between_threads(redactors: RedactorCache) -> None:
    assert redactors.get(["URL", "EMAIL_ADDRESS"]) is redactors.get(("EMAIL_ADDRESS", "URL"))
    assert redactors.peek(["US_ITIN", "UK_NHS"]) is None
    redactor = redactors.get(THREE)
    texts = [f"{i}: mail a{i}.b@example.com, call +1 212-555-{1000 + i:04d}, card {CARD}" for i in range(40)]
    expected = [redactor.redact(t).text for t in texts]
    results: list[list[str]] = []

    def work() -> None:
        results.append([redactor.redact(t).text for t in texts])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 8
    assert all(t.endswith("mail <EMAIL_ADDRESS>, call <PHONE_NUMBER>, card <CREDIT_CARD>") for t in expected)


# -- the gateway's side ----------------------------------------------------------------------------------------------


class _Store:
    def __init__(self, redactors: RedactorCache) -> None:
        self.redactors = redactors
        self.capture_max_chars = 100
        self.kept: list[Any] = []

    def policies(self) -> PrivacyPolicies:
        return PrivacyPolicies({"key_1": frozenset({"PHONE_NUMBER"})}, frozenset({"acc_in"}))

    def keep(self, calls: Any) -> int:
        self.kept.extend(calls)
        return len(calls)


def _version(redact: list[str] | None) -> Any:
    return SimpleNamespace(manifest=SimpleNamespace(redact=redact), model_name="m", version="1.0.0")


def _guard(redactors: RedactorCache, max_chars: int = 10_000) -> PrivacyGuard:
    from datetime import UTC, datetime

    guard = PrivacyGuard(_Store(redactors), max_chars=max_chars, timeout_s=5, now=lambda: datetime.now(UTC))
    guard.load()
    return guard


def test_the_model_policy_and_the_key_policy_apply_together(redactors: RedactorCache) -> None:
    guard = _guard(redactors)
    assert guard.entities(_version(["EMAIL_ADDRESS"]), "key_1") == {"EMAIL_ADDRESS", "PHONE_NUMBER"}
    assert guard.entities(_version(None), "key_1") == {"PHONE_NUMBER"}
    assert guard.entities(_version(None), "key_other") == frozenset()
    assert guard.entities(_version(["EMAIL_ADDRESS"]), None) == {"EMAIL_ADDRESS"}


def test_an_oip_request_is_rewritten_with_only_its_text_replaced(redactors: RedactorCache) -> None:
    guard = _guard(redactors)
    request = oip.InferRequest(
        id="call-7",
        inputs=[
            bytes_tensor("text", [f"mail {EMAIL}".encode(), b"nothing here", WAV], [3]),
            Tensor("x", "FP32", [1, 2], np.array([[1.5, -2.0]], dtype=np.float32), {"note": "kept"}),
        ],
        parameters={"binary_data_output": False},
        outputs=[{"name": "y"}],
    )
    done = asyncio.run(guard.redact_oip(_version(["EMAIL_ADDRESS"]), None, request))
    assert done is not None and dict(done.counts) == {"EMAIL_ADDRESS": 1}
    again = oip.decode_request(done.body, int(done.header_length))
    assert (
        again.id == "call-7" and again.parameters == {"binary_data_output": False} and again.outputs == [{"name": "y"}]
    )
    assert list(again.inputs[0].data) == [b"mail <EMAIL_ADDRESS>", b"nothing here", WAV]  # audio passes as sent
    assert again.inputs[1].parameters == {"note": "kept"}
    np.testing.assert_array_equal(again.inputs[1].data, np.array([[1.5, -2.0]], dtype=np.float32))
    assert EMAIL.encode() not in done.body
    assert request.inputs[0].data[0] == f"mail {EMAIL}".encode()  # the caller's request is not mutated
    assert asyncio.run(guard.redact_oip(_version(["PHONE_NUMBER"]), None, request)) is None  # nothing to replace


def test_too_much_text_to_redact_is_refused_before_any_work(redactors: RedactorCache) -> None:
    guard = _guard(redactors, max_chars=100)
    request = oip.InferRequest(id=None, inputs=[bytes_tensor("text", [b"a" * 101], [1])])
    with pytest.raises(BodyTooLarge, match=r"101 characters.*MODELMARKET_REDACT_MAX_CHARS"):
        asyncio.run(guard.redact_oip(_version(["EMAIL_ADDRESS"]), None, request))


def test_openai_text_is_replaced_wherever_a_backend_would_read_it(redactors: RedactorCache) -> None:
    raw = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "name": f"{EMAIL}", "content": [{"type": "text", "text": f"call me at {PHONE}"}]},
            {"role": "user", "content": f"card {CARD}"},
        ],
        "stop": [f"{EMAIL}"],
        "max_tokens": 5,
    }
    assert _openai_texts(raw) == ["be brief", EMAIL, f"call me at {PHONE}", f"card {CARD}", EMAIL]
    guard = _guard(redactors)
    out = asyncio.run(guard.redact_openai(_version(list(THREE)), None, raw))
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "name": "<EMAIL_ADDRESS>", "content": [{"type": "text", "text": "call me at <PHONE_NUMBER>"}]},
        {"role": "user", "content": "card <CREDIT_CARD>"},
    ]
    assert out["stop"] == ["<EMAIL_ADDRESS>"] and out["max_tokens"] == 5 and out["model"] == "chat"
    assert raw["messages"][2]["content"] == f"card {CARD}"  # the parsed request is left as it was
    embed = _openai_replaced({"input": ["a", [1, 2], "b"]}, iter(["A", "B"]))
    assert embed == {"input": ["A", [1, 2], "B"]}


def test_capture_is_queued_only_for_an_account_that_opted_in(redactors: RedactorCache) -> None:
    guard = _guard(redactors)
    store = guard.store
    assert isinstance(store, _Store)

    async def scenario() -> None:
        guard.start()
        try:
            guard.capture("acc_out", _version(None), "req_1", f"mail {EMAIL}", "ok")
            guard.capture("acc_in", _version(None), "req_2", "x" * 10_000, "ok")
        finally:
            await guard.stop()

    asyncio.run(scenario())
    assert [c.id for c in store.kept] == ["req_2"]
    assert len(store.kept[0].input_text) <= 100 + OVERLAP_CHARS + 1  # cut before it is queued


def test_captured_inputs_are_described_as_text() -> None:
    inputs = [
        bytes_tensor("text", [b"hello", b"world"], [2]),
        Tensor("x", "FP32", [1, 2], np.zeros((1, 2), np.float32)),
    ]
    assert describe_inputs(inputs) == "text: hello\ntext: world\nx: <FP32 [1, 2]>"
    body, length = encode_request(oip.InferRequest(id=None, inputs=inputs))
    assert [t.name for t in oip.decode_request(body, length).inputs] == ["text", "x"]


def test_phone_numbers_are_found_as_presidios_own_recognizer_finds_them() -> None:
    """The phone recognizer blanks a number out once one region found it: same findings, each parsed once."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    from modelmarket.privacy.recognizers import _phone_recognizer

    text = (
        "UK 020 7946 0958, DE 030 12345678, FR 01 23 45 67 89, US (212) 555-0187, IN +91 98765 43210, "
        "BR (11) 91234-5678, IL 03-123-4567, CA 416-555-0199, +44 20 7946 0958, card 4111 1111 1111 1111, 55120"
    )
    ours = sorted((r.start, r.end) for r in _phone_recognizer().analyze(text, ["PHONE_NUMBER"]))
    presidios = sorted((r.start, r.end) for r in PhoneRecognizer().analyze(text, ["PHONE_NUMBER"]))
    assert ours == presidios
    assert len(ours) == 9


# -- look-alike characters and separators ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "entity"),
    [
        ("4111.1111.1111.1111", "CREDIT_CARD"),
        ("4111/1111/1111/1111", "CREDIT_CARD"),
        ("4111  1111  1111  1111", "CREDIT_CARD"),
        ("4111_1111_1111_1111", "CREDIT_CARD"),
        ("4111\u00a01111\u00a01111\u00a01111", "CREDIT_CARD"),  # no-break spaces
        ("4111\u20111111\u20111111\u20111111", "CREDIT_CARD"),  # non-breaking hyphens
        ("4111 \u2013 1111 \u2013 1111 \u2013 1111", "CREDIT_CARD"),  # en dashes between spaces
        (
            "\uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11",
            "CREDIT_CARD",
        ),  # full-width digits
        ("\U0001d7d2\U0001d7cf\U0001d7cf\U0001d7cf 1111 1111 1111", "CREDIT_CARD"),  # mathematical digits
        ("4111\u200b1111\u200b1111\u200b1111", "CREDIT_CARD"),  # zero-width spaces
        ("card4111111111111111", "CREDIT_CARD"),  # stuck to letters
        ("378282246310005", "CREDIT_CARD"),  # 15 digits (AmEx)
        ("jane.doe\uff20example.com", "EMAIL_ADDRESS"),  # full-width commercial at
        ("jane.doe@example\uff0ecom", "EMAIL_ADDRESS"),
        ("jane\u00ad.doe@exa\u200dmple.com", "EMAIL_ADDRESS"),  # soft hyphen, zero-width joiner
        ("+1\u00a0212\u2011555\u20110187", "PHONE_NUMBER"),
        ("\uff0b\uff11 \uff12\uff11\uff12-\uff15\uff15\uff15-\uff10\uff11\uff18\uff17", "PHONE_NUMBER"),
    ],
)
def test_look_alike_characters_and_other_separators_do_not_hide_an_entity(
    redactors: RedactorCache, written: str, entity: str
) -> None:
    """The text around the finding comes back exactly as written (non-ASCII included): only the finding goes."""
    text = f"Grüße — pay {written} — \uff2f\uff2b"
    done = redactors.get(THREE).redact(text)
    if written.startswith("card"):
        assert done.text == f"Grüße — pay card<{entity}> — \uff2f\uff2b"
    else:
        assert done.text == f"Grüße — pay <{entity}> — \uff2f\uff2b"
    assert dict(done.counts) == {entity: 1}


def test_a_digit_run_failing_the_luhn_check_is_not_a_card(redactors: RedactorCache) -> None:
    for text in ("ref 4111.1111.1111.1112", "ISBN 978-3-16-148410-0", "tel 0049 30 1234 5678"):
        assert redactors.get(["CREDIT_CARD"]).redact(text).text == text
    done = redactors.get(["CREDIT_CARD"]).redact("4111 1111 1111 1111 12/27 and 5555.5555.5555.4444, thanks")
    assert done.text == "<CREDIT_CARD> 12/27 and <CREDIT_CARD>, thanks"


# -- what a policy refuses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "element",
    [
        f"write to {EMAIL} \xff".encode("latin-1"),  # UTF-8 but for one byte
        f"José, {EMAIL}".encode("latin-1"),
        f"write to {EMAIL}".encode("utf-16-le"),  # valid UTF-8, every other character a NUL
        f"write to {EMAIL}".encode("utf-16"),
        f"write to\x00 {EMAIL}".encode(),
    ],
)
def test_text_not_in_utf8_or_holding_nul_is_refused_when_a_policy_applies(
    redactors: RedactorCache, element: bytes
) -> None:
    guard = _guard(redactors)
    request = oip.InferRequest(id=None, inputs=[bytes_tensor("text", [b"fine", element], [2])])
    with pytest.raises(InvalidInput, match=r"input 'text' element 1: model 'm' .* UTF-8 text without NUL"):
        asyncio.run(guard.redact_oip(_version(["EMAIL_ADDRESS"]), None, request))
    assert asyncio.run(guard.redact_oip(_version(None), None, request)) is None  # no policy: sent as it is


def test_audio_and_images_pass_as_sent_when_a_policy_applies(redactors: RedactorCache) -> None:
    from modelmarket.gateway.privacy import is_media

    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + EMAIL.encode("latin-1") + b"\xff"
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\xff"
    assert is_media(WAV) and is_media(png) and is_media(jpeg)
    assert not is_media(f"RIFF {EMAIL} \xff".encode("latin-1"))
    guard = _guard(redactors)
    request = oip.InferRequest(id=None, inputs=[bytes_tensor("media", [WAV, png, jpeg], [3])])
    assert asyncio.run(guard.redact_oip(_version(["EMAIL_ADDRESS"]), None, request)) is None


def test_openai_text_holding_nul_is_refused_when_a_policy_applies(redactors: RedactorCache) -> None:
    guard = _guard(redactors)
    raw = {"model": "chat", "messages": [{"role": "user", "content": "\x00".join(EMAIL)}]}
    with pytest.raises(InvalidInput, match="NUL character"):
        asyncio.run(guard.redact_openai(_version(["EMAIL_ADDRESS"]), None, raw))
    assert asyncio.run(guard.redact_openai(_version(None), None, raw)) is raw


# -- never on the event loop, never waiting for a build --------------------------------------------------------------


class _RecordingRedactor:
    def __init__(self) -> None:
        self.threads: set[int] = set()

    def redact(self, text: str, deadline: float | None = None) -> Any:
        from modelmarket.privacy import Redacted

        self.threads.add(threading.get_ident())
        return Redacted(text)


def test_many_short_texts_are_redacted_off_the_event_loop(redactors: RedactorCache) -> None:
    guard = _guard(redactors)
    recording = _RecordingRedactor()

    async def run(texts: list[str]) -> set[int]:
        recording.threads.clear()
        guard._redactor = lambda entities: _ready(recording)  # type: ignore[method-assign]
        await guard.redact_texts(frozenset({"EMAIL_ADDRESS"}), texts)
        return recording.threads - {threading.get_ident()}

    assert asyncio.run(run(["1"] * 1024)), "1,024 one-character elements were redacted on the event loop"
    assert asyncio.run(run(["x" * 5000])), "a long text was redacted on the event loop"


async def _ready(value: Any) -> Any:
    return value


def test_peek_and_other_sets_never_wait_for_a_redactor_being_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import modelmarket.privacy.redaction as redaction

    release, started = threading.Event(), threading.Event()
    built: list[frozenset[str]] = []

    class SlowRedactor:
        def __init__(self, entities: frozenset[str]) -> None:
            built.append(entities)
            if "URL" in entities:  # the first build of a set: importing Presidio takes seconds
                started.set()
                release.wait(30)

    monkeypatch.setattr(redaction, "Redactor", SlowRedactor)
    cache = RedactorCache()
    builders = [threading.Thread(target=cache.get, args=(["URL"],)) for _ in range(3)]
    for t in builders:
        t.start()
    try:
        assert started.wait(10)
        seen: list[Any] = []
        other = threading.Thread(target=lambda: seen.extend([cache.peek(["URL"]), cache.get(["EMAIL_ADDRESS"])]))
        other.start()
        other.join(2)
        assert not other.is_alive(), "peek or another set's get waited for a build"
        assert seen[0] is None and isinstance(seen[1], SlowRedactor)
    finally:
        release.set()
        for t in builders:
            t.join(10)
    assert isinstance(cache.peek(["URL"]), SlowRedactor)
    assert built.count(frozenset({"URL"})) == 1  # callers of the set being built waited for that one build


# -- capture storage and policy reloads ------------------------------------------------------------------------------


class _CaptureRepo:
    def __init__(self) -> None:
        self.stored: list[Any] = []

    def capture_accounts(self) -> list[str]:
        return ["acc_in"]

    def add_captured(self, calls: list[Any], keep_per_account: int) -> None:
        for c in calls:  # as PostgreSQL does: a NUL in text fails the statement, and so the whole transaction
            if "\x00" in c.input_text + c.output_text or c.id == "poison":
                raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        self.stored.extend(calls)


class _CaptureUow:
    def __init__(self, repo: _CaptureRepo) -> None:
        self.repo = repo

    @contextlib.contextmanager
    def write(self, lock: Any = None, key: str = "") -> Iterator[Any]:
        pending = _CaptureRepo()
        yield SimpleNamespace(privacy=pending)
        self.repo.stored.extend(pending.stored)  # committed only when the block ended normally

    read = write


def test_captured_text_with_nul_is_stored_and_one_bad_call_loses_no_other(redactors: RedactorCache) -> None:
    from datetime import UTC, datetime

    from modelmarket.privacy import CallToKeep, PrivacyService

    repo = _CaptureRepo()
    service = PrivacyService(
        _CaptureUow(repo),  # type: ignore[arg-type]
        lambda: datetime.now(UTC),
        capture_max_chars=1000,
        capture_max_calls=10,
        redactors=redactors,
    )
    at = datetime.now(UTC).isoformat()
    calls = [
        CallToKeep("req_1", "acc_in", "m", "1", at, "text: " + "\x00".join(f"mail {EMAIL}"), "ok"),
        CallToKeep("poison", "acc_in", "m", "1", at, "x", "y"),
        CallToKeep("req_3", "acc_in", "m", "1", at, "hello", "ok"),
    ]
    assert service.keep(calls) == 2
    assert [c.id for c in repo.stored] == ["req_1", "req_3"]
    assert repo.stored[0].input_text == "text: mail <EMAIL_ADDRESS>"  # NULs dropped, then redacted


def test_a_failing_policy_reload_keeps_the_policies_and_still_refreshes_the_keys(redactors: RedactorCache) -> None:
    from modelmarket.accounts import KeyIndex
    from modelmarket.gateway.state import GatewayState
    from modelmarket.registry import Catalogue

    guard = _guard(redactors)
    guard.loaded = False
    store = guard.store
    assert isinstance(store, _Store)
    loads = iter(range(1, 100))
    state = GatewayState(
        lambda: KeyIndex(by_hash={}, key_ids={"load": str(next(loads))}),
        lambda: Catalogue(models={}),
        refresh_s=60,
        privacy=guard,
    )

    def broken() -> PrivacyPolicies:
        raise RuntimeError("the database went away")

    async def scenario() -> None:
        store.policies = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):  # never loaded: no call may be served with policies unknown
            await state.keys.reload()
        del store.policies
        await state.keys.reload()
        assert guard.policies.for_key("key_1") == {"PHONE_NUMBER"}
        store.policies = broken  # type: ignore[method-assign]
        await state.keys.reload()  # a revoked key must stop working even so
        assert state.keys.value.key_ids == {"load": "3"}
        assert guard.policies.for_key("key_1") == {"PHONE_NUMBER"}  # the previous policies stay in force

    asyncio.run(scenario())
