"""The web dashboard in a real browser (Playwright driving Debian's Chromium, headless) against a real gateway
serving the demo catalogue: a consumer signs in with an API key, searches, opens a model, draws a digit on the
playground's canvas and calls it (the answer with its IU and cost), sees the call in its usage with that cost, opens
its invoice and signs out; a consumer cannot open the operator's pages and an operator can. A screenshot is written
at every step under the test's output folder, and the browser's console stays free of errors (a script or style the
Content-Security-Policy blocked would be one)."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from tests.e2e.conftest import Gateway, billing_period_for_test

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT_MS = 30_000
"""How long a step may wait for the gateway's answer to show (the machine may be busy with other tests)."""
USAGE_WAIT_S = 30.0
"""How long the usage page may take to show a call (the metering child applies the event log every poll)."""
ZERO = [(128, 24), (196, 70), (210, 150), (168, 226), (90, 226), (48, 150), (60, 70), (128, 24)]
"""A digit zero, as points on the 256 px canvas."""

pytestmark = [
    pytest.mark.timeout(600),  # the session's demo catalogue may be built first
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Walk:
    """One browser context (its own cookies), screenshots numbered in the order taken, console errors kept."""

    def __init__(self, browser: Browser, base_url: str, shots: Path, who: str) -> None:
        self.context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(STEP_TIMEOUT_MS)
        self.shots = shots
        self.who = who
        self.taken: list[Path] = []
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        # A refused page answers 403 on purpose; anything else logged as an error is a fault (a CSP violation).
        if message.type == "error" and "status of 403" not in message.text:
            self.errors.append(message.text)

    def shot(self, step: str) -> None:
        path = self.shots / f"{self.who}-{len(self.taken) + 1:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)

    def sign_in(self, key: str) -> None:
        self.page.goto("/signin")
        self.page.fill("#key", key)
        self.page.click("#signin-form button[type=submit]")
        expect(self.page.locator(".account-name")).to_be_visible()

    def close(self) -> None:
        self.context.close()


def draw(page: Page, points: list[tuple[int, int]]) -> None:
    box = page.locator("#digit-canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()


def test_a_consumer_walks_the_dashboard_and_an_operator_sees_the_runners(
    gateway: Gateway, browser: Browser, tmp_path: Path
) -> None:
    cli = gateway.cli
    period = billing_period_for_test()
    consumer = f"dash-{uuid.uuid4().hex[:8]}"
    key = cli.new_consumer(consumer)
    operator_key = str(cli.json("keys", "create", "operator")["key"])
    shots = tmp_path / "screenshots"
    shots.mkdir()

    walk = Walk(browser, gateway.url, shots, "consumer")
    page = walk.page
    page.goto("/")
    expect(page.locator('.card[data-model="digits"]')).to_be_visible()
    walk.shot("catalogue")
    walk.sign_in(key)
    expect(page.locator(".account-name")).to_have_text(consumer)
    walk.shot("signed-in")

    page.fill("#q", "handwritten digit")  # htmx swaps the results in as the viewer types
    expect(page.locator('.card[data-model="sentiment"]')).to_have_count(0)
    expect(page.locator('.card[data-model="digits"]')).to_be_visible()
    assert "q=handwritten" in page.url  # the search is in the address bar (hx-push-url)
    walk.shot("search")

    page.click('.card[data-model="digits"] .card-title')
    expect(page.locator("h1")).to_contain_text("digits")
    expect(page.locator("h3", has_text="Benchmark")).to_be_visible()  # the gate's figures, public on the version
    expect(page.locator(".stages")).to_have_count(0)  # its submission and stages: the provider's and operators' only
    walk.shot("model")

    page.click("text=Try it in the playground")
    expect(page.locator("#digit-canvas")).to_be_visible()
    draw(page, ZERO)
    values = [int(v) for v in page.input_value("#pixels").split()]
    assert len(values) == 64 and max(values) > 0 and all(0 <= v <= 16 for v in values)
    walk.shot("drawn")
    page.click("#call-button")
    expect(page.locator("#answer .iu")).to_have_text("1")
    cost = page.locator("#answer .cost").inner_text()
    assert re.fullmatch(r"[0-9.]+ USD", cost), cost
    label = page.locator("#answer .output-text").first.inner_text()
    assert label in {str(d) for d in range(10)}, label
    walk.shot("answer")

    amount = cost.split()[0]
    deadline = time.monotonic() + USAGE_WAIT_S
    while True:
        page.goto("/usage")
        row = page.locator("table.usage-models tbody tr", has_text="digits")
        if row.count() > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expect(row.first).to_contain_text(amount)
    walk.shot("usage")

    [invoice] = cli.json("invoices", "list", consumer, "--period", period)["invoices"]
    page.click("nav >> text=Invoices")
    page.click(f"a[href='/invoices/{invoice['id']}']")
    [line] = invoice["lines"]
    assert line["model"] == "digits" and line["events"] == 1 and line["amount_exact"] == amount
    expect(page.locator("main h1")).to_contain_text(invoice["id"])
    expect(page.locator("main tr", has_text="digits").first).to_contain_text(line["amount"])
    expect(page.locator("main tr", has_text=f"Total ({invoice['currency']})")).to_contain_text(invoice["total"])
    walk.shot("invoice")

    for path in ("/runners", "/audit"):
        answer = page.goto(path)
        assert answer is not None and answer.status == 403, path
        expect(page.locator("h1")).to_contain_text("403")
    walk.shot("operator-page-refused")

    page.click("text=Sign out")
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.goto("/usage")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fusage$"))
    walk.shot("signed-out")
    walk.close()

    operator = Walk(browser, gateway.url, shots, "operator")
    operator.sign_in(operator_key)
    answer = operator.page.goto("/runners")
    assert answer is not None and answer.status == 200
    expect(operator.page.locator("main")).to_contain_text("digits")
    operator.shot("runners")
    answer = operator.page.goto("/audit")
    assert answer is not None and answer.status == 200
    operator.shot("audit")
    operator.close()

    assert walk.errors == [] and operator.errors == []
    taken = sorted(p.name for p in shots.iterdir())
    assert taken == sorted(p.name for p in walk.taken + operator.taken)
    assert all(p.stat().st_size > 1000 for p in walk.taken + operator.taken)
