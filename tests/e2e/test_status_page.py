"""The status page in a real headless Chromium: `rowcall ui` (the console script) against the local stack.

`ROWCALL_SCREENSHOT=docs/status-page.png pytest tests/e2e/test_status_page.py` also writes the
README's screenshot.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from rowcall_local.batch_api import is_terminal

from .conftest import ROOT, LocalStack, running_stack

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ROWS = 12
# Some of the ROWS fail (all 12 succeed once in 4096 runs): there is something to reprocess.
FAIL_RATE = "0.5"
COUNTS = ("completed_count", "failed_count", "pending_count", "total_count", "rows_skipped")
UI_START_S = 30
SCREENSHOT_ROWS = 300
PAGE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("rowcall-ui")
    with running_stack(state, "--provider-delay-ms", "5:60", "--provider-fail-rate", FAIL_RATE) as started:
        yield started


@pytest.fixture(scope="module")
def ui_url(stack: LocalStack) -> Iterator[str]:
    """`rowcall ui --port 0` as a user runs it; its URL is the line it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROWCALL_", "AWS_"))}
    rowcall = Path(sys.executable).parent / "rowcall"
    process = subprocess.Popen(
        [str(rowcall), "--state-dir", str(stack.state_dir), "ui", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or []], daemon=True).start()
    try:
        first = lines.get(timeout=UI_START_S)
        found = re.fullmatch(r"rowcall ui: (http://127\.0\.0\.1:(\d+)/)\n", first)
        assert found and int(found.group(2)) > 0, f"rowcall ui printed {first!r}"
        yield found.group(1)
        assert process.poll() is None, "rowcall ui stopped while the page was open"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(10) == 0, "rowcall ui did not exit cleanly on Ctrl-C"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, ui_url: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 720}, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(PAGE_TIMEOUT_MS)
    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    opened.goto(ui_url)
    expect(opened.locator("#live")).to_have_text(re.compile(r"^live"))
    try:
        yield opened
    finally:
        context.close()


def _upload(stack: LocalStack, key: str, body: str) -> str:
    stack.s3.put_object(
        Bucket=stack.info["bucket"],
        Key=key,
        Body=body.encode(),
        Metadata={"reuse": "off", "key-column": "sku"},
    )
    return str(stack.batch_for(key)["batch_id"])


def _api_batch(stack: LocalStack, batch_id: str) -> dict[str, Any]:
    with stack.api as api:
        answer: dict[str, Any] = api.get(f"/batches/{batch_id}").raise_for_status().json()
    return answer


def _expect_counts(page: Page, batch: dict[str, Any]) -> None:
    card = page.locator(f'li.batch[data-batch-id="{batch["batch_id"]}"]')
    expect(card.locator(".status")).to_have_text(batch["status"])
    for name in COUNTS:
        shown = "?" if batch[name] is None else str(batch[name])
        expect(card.locator(f'[data-count="{name}"]')).to_have_text(shown)
    finished = batch["completed_count"] + batch["failed_count"]
    expect(card.locator('[role="progressbar"]')).to_have_attribute("aria-valuenow", str(finished))


def _screenshot(page: Page, stack: LocalStack, path: Path) -> None:
    """The README's picture: the two batches above and one caught running."""
    many = "".join(f"L{n},prompt {n}\n" for n in range(SCREENSHOT_ROWS))
    running = _upload(stack, "uploads/ui-catalogue.csv", f"sku,prompt\n{many}")
    bar = page.locator(f'li.batch[data-batch-id="{running}"] [role="progressbar"]')
    expect(bar).not_to_have_attribute("aria-valuenow", "0")
    page.set_viewport_size({"width": 1100, "height": 300})  # the full page is as tall as its content
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": 1100, "height": 720})
    stack.wait_terminal(running, timeout_s=120)  # nothing of it runs on into what follows


def test_the_page_follows_batches_to_their_end_and_acts_on_them(page: Page, stack: LocalStack) -> None:
    rows = "".join(f"K{n},prompt {n}\n" for n in range(ROWS))
    first = _upload(stack, "uploads/ui-prices.csv", f"sku,prompt\n{rows}K-bad,one,too many\n")
    card = page.locator(f'li.batch[data-batch-id="{first}"]')
    expect(card.locator(".batch-id")).to_have_text(first)
    expect(card).to_have_attribute("data-status", re.compile("^(completed|partial)$"))
    ended = _api_batch(stack, first)
    assert ended["failed_count"] > 0 and ended["rows_skipped"] == 1, ended
    _expect_counts(page, ended)
    expect(page.locator("#banner")).to_be_hidden()
    expect(card.locator("button.action[data-action=cancel]")).to_be_disabled()
    expect(card.locator("button.action[data-action=resume]")).to_be_disabled()

    # Newest first: a header-only file is a batch that completes at once with no rows.
    second = _upload(stack, "uploads/ui-empty.csv", "sku,prompt\n")
    expect(page.locator("li.batch").first).to_have_attribute("data-batch-id", second)
    expect(page.locator("li.batch").nth(1)).to_have_attribute("data-batch-id", first)
    expect(page.locator("li.batch").first).to_have_attribute("data-status", "completed")
    _expect_counts(page, _api_batch(stack, second))

    # results.csv through the page's server is the object in the bucket.
    ended = stack.wait_batch(first, lambda b: bool((b.get("results") or {}).get("csv_key")), 30)
    with page.expect_download() as download:
        card.locator("a.download.results").click()
    stored = stack.s3.get_object(Bucket=stack.info["bucket"], Key=ended["results"]["csv_key"])["Body"].read()
    assert Path(download.value.path()).read_bytes() == stored
    assert download.value.suggested_filename == f"{first}-results.csv"

    if os.environ.get("ROWCALL_SCREENSHOT"):
        _screenshot(page, stack, Path(os.environ["ROWCALL_SCREENSHOT"]))

    card.locator("button.action[data-action=details]").click()
    expect(card.locator(".failed-rows tbody tr")).to_have_count(min(ended["failed_count"], 50))
    expect(card.locator(".row-errors tbody tr")).to_have_count(1)
    expect(card.locator(".row-errors tbody")).to_contain_text("column_count")

    # The gallery: each completed row's saved image as a thumbnail named by its row, served by the
    # page's own server from the bucket and linking to the full file.
    with stack.api as api:
        completed = api.get(f"/batches/{first}/rows", params={"status": "completed", "limit": 100}).json()[
            "items"
        ]
    saved = {row["key"]: row["saved_outputs"][0]["key"] for row in completed}
    figures = card.locator(".gallery figure")
    expect(figures).to_have_count(ended["completed_count"])
    assert sorted(figures.locator("figcaption").all_text_contents()) == sorted(saved)
    for image in figures.locator("img").all():
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("img => img.naturalWidth") == 1  # a 1x1 PNG the browser decoded
    link = figures.first.locator("a")
    shown = figures.first.locator("figcaption").inner_text()
    full = page.request.get(page.url.rstrip("/") + str(link.get_attribute("href")))
    assert full.ok and full.headers["content-type"] == "image/png"
    assert full.body() == stack.s3.get_object(Bucket=stack.info["bucket"], Key=saved[shown])["Body"].read()

    keys_before = stack.provider_stats()["unique_idempotency_keys"]
    card.locator("button.action[data-action=reprocess]").click()
    expect(page.locator("#notice")).to_contain_text(f"reprocess of {first} accepted")
    expect(page.locator("#banner")).to_be_hidden()
    # The batch reopens: each failed row gets one new run, then it ends again.
    rerun = keys_before + ended["failed_count"]
    stack.wait_batch(first, lambda _: stack.provider_stats()["unique_idempotency_keys"] == rerun, 60)
    again = stack.wait_batch(first, is_terminal, 60)
    _expect_counts(page, again)


# Half the runs fail on this stack: enough rows that more than one page (100) of them completes.
GALLERY_ROWS = 240


def test_the_gallery_shows_every_saved_image_page_by_page(page: Page, stack: LocalStack) -> None:
    rows = "".join(f"G{n},gallery prompt {n}\n" for n in range(GALLERY_ROWS))
    batch_id = _upload(stack, "uploads/ui-gallery.csv", f"sku,prompt\n{rows}")
    ended = stack.wait_terminal(batch_id, timeout_s=240)
    completed = ended["completed_count"]
    assert completed > 100, ended
    card = page.locator(f'li.batch[data-batch-id="{batch_id}"]')
    expect(card).to_have_attribute("data-status", re.compile("^(completed|partial)$"))
    card.locator("button.action[data-action=details]").click()
    figures = card.locator(".gallery figure")
    expect(figures).to_have_count(100)  # the first page, asked again at each refresh
    more = card.locator("button.action[data-action=more-images]")
    more.click()
    expect(figures).to_have_count(completed)
    expect(more).to_have_count(0)  # no page left
    captions = figures.locator("figcaption").all_text_contents()
    assert len(set(captions)) == completed and all(c.startswith("G") for c in captions)
