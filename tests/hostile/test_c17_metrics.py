"""17. Metrics under attack: made-up model names, versions and paths must not grow ``/metrics`` (a label value per
name would let any caller grow the gateway's memory and every scrape without bound), and ``/metrics`` must not be
read without an operator's key, whatever the path, the header or the method.

The platform is the session's real gateway (``conftest.market``); the figures are read as Prometheus would.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.hostile.conftest import Market
from tests.hostile.support import digits_body, http_request, raw_request

from modelmarket.registry import CatalogueLoader

MARK = "zq"
"""Ends every made-up name, so none can hide in a figure: no label value of ours may contain it."""
REQUEST_FAMILIES = (
    "modelmarket_requests",
    "modelmarket_request_duration_seconds",
    "modelmarket_errors",
    "modelmarket_limit_refusals",
    "modelmarket_inference_units",
    "modelmarket_revenue",
    "gen_ai_server_request_duration_seconds",
    "gen_ai_client_token_usage",
)
NAMES_PER_ROUND = 60


@pytest.fixture(scope="module")
def operator(market: Market) -> dict[str, str]:
    name = f"scraper-{uuid.uuid4().hex[:6]}"
    market.admin.accounts.create(name, "operator", actor="hostile-tests")
    return {"Authorization": f"Bearer {market.admin.accounts.issue_key(name, actor='hostile-tests').secret}"}


def scrape(market: Market, operator: dict[str, str]) -> str:
    r = httpx.get(f"{market.url}/metrics", headers=operator, timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def request_series(text: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {
        (s.name, frozenset(s.labels.items()))
        for family in text_string_to_metric_families(text)
        if family.name in REQUEST_FAMILIES
        for s in family.samples
    }


def send_made_up_names(market: Market, auth: dict[str, str], tag: str, count: int) -> None:
    """Every way a caller can put a name of its own where a model or version goes."""
    with httpx.Client(base_url=market.url, timeout=30) as c:
        for i in range(count):
            name = f"{tag}{i:04d}{MARK}"
            assert c.post(f"/v2/models/{name}/infer", json=digits_body(), headers=auth).status_code == 404
            assert (
                c.post(f"/v2/models/digits/versions/{name}/infer", json=digits_body(), headers=auth).status_code == 404
            )
            assert c.get(f"/v2/models/{name}/ready").status_code in (400, 404)
            chat = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
            assert c.post("/v1/chat/completions", json=chat, headers=auth).status_code == 404
            assert c.post("/v1/embeddings", json={"model": name, "input": "x"}, headers=auth).status_code == 404
            assert c.post(f"/v2/models/{name}/infer", json=digits_body()).status_code == 401
            c.get(f"/{name}/{name}")  # the dashboard's paths


def test_made_up_names_make_no_label_values_and_no_series(market: Market, operator: dict[str, str]) -> None:
    auth = market.consumer("c17-names").auth
    send_made_up_names(market, auth, "warm", 3)  # every kind of refusal has happened once
    scrape(market, operator)  # and a scrape (the next one counts it)
    before = request_series(scrape(market, operator))
    send_made_up_names(market, auth, "grow", NAMES_PER_ROUND)
    text = scrape(market, operator)
    after = request_series(text)

    assert MARK not in text
    grown = after - before
    assert len(grown) <= 4, f"{NAMES_PER_ROUND * 7} made-up names made new series: {sorted(grown)[:10]}"
    catalogue = CatalogueLoader(market.admin.store).load()
    for _, labels in after:
        found = dict(labels)
        model = found.get("model", found.get("gen_ai_request_model", ""))
        assert model == "" or model in catalogue.models, model
        version = found.get("version", "")
        assert version == "" or version in catalogue.models[model].versions, (model, version)


@pytest.mark.parametrize(
    "path",
    ["/metrics/", "//metrics", "/metrics/../metrics", "/Metrics", "/metrics%2f", "/./metrics", "/metrics?public=1"],
)
def test_no_path_trick_reads_metrics_without_a_key(market: Market, path: str) -> None:
    answer = raw_request(market.hostport, http_request("GET", path))
    assert answer.status is not None and answer.status < 500, f"{path}: {answer.status}"
    assert b"modelmarket_requests_total" not in answer.body, f"{path} answered {answer.status} with the metrics"


def test_only_an_operators_key_reads_metrics(market: Market, operator: dict[str, str]) -> None:
    consumer = market.consumer("c17-keys")
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Basic b3BzOm9wcw=="}, 401),
        ({"Authorization": "Bearer " + "x" * 2_000}, 401),  # past 512 bytes: refused unread
        (consumer.auth, 403),
        ({"Cookie": f"session={consumer.key}"}, 401),
    ):
        r = httpx.get(f"{market.url}/metrics", headers=headers, timeout=30)
        assert r.status_code == status, (headers.keys(), r.status_code, r.text[:200])
        assert "modelmarket_requests_total" not in r.text
    for method in ("POST", "PUT", "DELETE"):
        r = httpx.request(method, f"{market.url}/metrics", headers=operator, timeout=30)
        assert r.status_code == 405 and "modelmarket_" not in r.text


def test_a_scrapers_accept_header_cannot_break_the_answer(market: Market, operator: dict[str, str]) -> None:
    for accept in (
        "application/openmetrics-text; version=abc",
        "application/openmetrics-text; version=1.0.0; escaping=nonsense",
        "text/plain; version=" + "9" * 400,
        "*/*;" * 200,  # past 512 characters: not parsed at all
    ):
        r = httpx.get(f"{market.url}/metrics", headers={**operator, "Accept": accept}, timeout=30)
        assert r.status_code == 200, (accept[:60], r.text[:200])
        assert "modelmarket_requests_total" in r.text
