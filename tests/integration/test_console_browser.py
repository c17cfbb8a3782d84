"""The console in a real browser: Debian's chromium, headless, driven by Playwright, against
the real roles on Postgres and RabbitMQ (SF and AE simulated). An operator signs in, finds why
a record is owned by whom, fixes an unconnected user and watches reconcile correct the record,
pauses a round-robin member and sees the next pick skip them, replays a dead letter; every
page passes axe-core at 1280 px and 390 px and is saved as a screenshot: in build/console/ (test
artefacts, not tracked), or in docs/console/ with OWNERSYNC_UPDATE_SCREENSHOTS=1 (the committed
ones the README and the closing notes point at)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from services.bootstrap import Running
from services.common.broker.base import REASON_HEADER
from services.common.broker.rabbit import RabbitBroker
from services.common.messages import SfRecord, SfRecordEvent, dump_event, event_id_for
from services.sim.embedded import wait_until_idle
from tests.integration.api_support import ACME, ALICE_SF, DAVE_SF, Api, sf_id
from tests.outbound import Poster

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
REPO = Path(__file__).resolve().parents[2]
SHOTS = (
    REPO / "docs" / "console"
    if os.environ.get("OWNERSYNC_UPDATE_SCREENSHOTS") == "1"
    else REPO / "build" / "console"
)
WIDTHS = {"1280": (1280, 900), "390": (390, 844)}
KIM = "00Q5g0000ZWHszxEQD"  # the fixtures' lead: created owned by alice, then reassigned
T = f"/v1/tenants/{ACME}"
expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's chromium. Install it with "
            "scripts/ensure-browser.sh (apt-get install -y chromium); `make test-integration` "
            "runs it first."
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


async def open_page(browser: Browser, width: str = "1280") -> Page:
    w, h = WIDTHS[width]
    # bypass_csp: the console's policy forbids inline scripts, and axe-core goes in as one.
    context = await browser.new_context(viewport={"width": w, "height": h}, bypass_csp=True)
    return await context.new_page()


async def sign_in(page: Page, api: Api, key: str) -> None:
    await page.goto(f"{api.url}/console")
    await expect(page).to_have_url(f"{api.url}/console/sign-in")
    await page.get_by_label("API key").fill(api.keys[key])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Overview of {ACME}")


async def story(stack: Running) -> Poster:
    """Kim's lead is created owned by alice (connected, S2), then reassigned to dave, who is
    not connected (S4): AE keeps alice's AE user, 101."""
    poster = Poster(stack)
    assert (await poster.post("lead-created-owner-connected.xml")).status_code == 200
    reassigned = await poster.post("lead-reassigned-not-connected.xml", "record-reassigned")
    assert reassigned.status_code == 200
    return poster


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.1)


async def park_dead_letter(api: Api, reason: str) -> SfRecordEvent:
    """A SF created event for a new lead owned by alice, parked through the DLX as the workers
    park one."""
    now = datetime.now(UTC)
    source = f"04l-console-{uuid.uuid4().hex[:8]}"
    event = SfRecordEvent(
        type="sf.record.created",
        tenant=ACME,
        event_id=event_id_for(ACME, "sf", source),
        source_id=source,
        occurred_at=now,
        received_at=now,
        payload=SfRecord(
            object="Lead",
            record_id=sf_id("00Q", 4242),
            owner_id=ALICE_SF,
            email="parked@example.com",
            system_modstamp=now,
        ),
    )
    broker = api.runtime.broker
    assert isinstance(broker, RabbitBroker)
    await broker.connect()
    assert broker._connection is not None
    async with broker._connection.channel(publisher_confirms=True) as channel:
        dlx = await channel.get_exchange(broker.dlx_name)
        headers: dict[str, Any] = {
            REASON_HEADER: reason,
            "x-ownersync-queue": "syncer",
            "tenant": ACME,
        }
        message = aio_pika.Message(
            dump_event(event), headers=headers, message_id=str(event.event_id), type=event.type
        )
        await dlx.publish(message, routing_key="")
    return event


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations of the page as it is now."""
    await page.add_script_tag(content=AXE)
    result = await page.evaluate(
        """async () => {
            const r = await axe.run(document, {runOnly: {type: 'tag', values:
                ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(' '))}));
        }"""
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]


async def test_sign_in_and_read_why_a_reassigned_record_is_owned_by_whom(
    stack: Running, api: Api, browser: Browser
) -> None:
    await story(stack)
    page = await open_page(browser)
    await sign_in(page, api, "read")
    await page.get_by_role("link", name="Records").click()
    await page.get_by_label("SF id, prospect id or email").fill(KIM[:15])
    await page.get_by_role("button", name="Search").click()
    timeline = page.get_by_role("table").filter(has_text="Every decision, oldest first")
    rules = timeline.locator("tbody th.rule")
    await expect(rules).to_have_text(["S2", "RELAY", "S4"])
    s4 = timeline.locator("tbody tr").nth(2)
    await expect(s4).to_contain_text("not a connected user")
    await expect(s4).to_contain_text("sf.record.reassigned")
    after = s4.locator("td").nth(2)
    await expect(after).to_contain_text(f"SF owner {DAVE_SF}")  # dave owns it in SF
    await expect(after).to_contain_text("AE user 101")  # and AE keeps alice's AE user
    await expect(page.locator(".ae-owner")).to_have_text("user 101")


async def test_connect_an_unconnected_user_and_reconcile_corrects_the_record(
    stack: Running, api: Api, browser: Browser
) -> None:
    poster = await story(stack)
    page = await open_page(browser)
    await sign_in(page, api, "write")
    await page.get_by_role("link", name="Connected users").click()
    unmapped = page.get_by_role("region", name="Not connected")
    await expect(unmapped).to_contain_text(DAVE_SF)
    await page.get_by_label("AE user", exact=True).select_option("105")
    await page.get_by_label("SF user", exact=True).select_option(DAVE_SF)
    await page.get_by_role("button", name="Connect", exact=True).click()
    await expect(page.get_by_role("status").first).to_contain_text(
        f"AE user 105 and SF user {DAVE_SF} connected"
    )
    await page.get_by_role("button", name="Preview reconcile").click()
    await expect(page.locator("main")).to_contain_text("would_fix 1")
    await page.get_by_role("button", name="Apply reconcile").click()
    await expect(page.locator("main")).to_contain_text("fixed 1")
    await wait_until_idle(stack, settled=poster.posted)
    assert stack.ae_sim is not None
    record = (await api.get(f"{T}/records/sf/{KIM}", key="read")).json()
    assert stack.ae_sim.prospects[record["prospectId"]]["assignedUserId"] == 105
    await page.get_by_role("link", name="Records").click()
    await page.get_by_label("SF id, prospect id or email").fill(KIM)
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator(".ae-owner")).to_have_text("user 105")
    await expect(page.locator("tbody th.rule").last).to_have_text("S5")


async def test_pause_a_round_robin_member_and_the_next_pick_skips_them(
    stack: Running, api: Api, browser: Browser
) -> None:
    page = await open_page(browser)
    await sign_in(page, api, "write")
    await page.get_by_role("link", name="Round robin").click()
    next_up = page.locator(".next-user")
    await expect(next_up).to_have_attribute("data-user", "101")
    await page.get_by_role("button", name="Pause user 101 in inbound-sdrs").click()
    await expect(page.locator("#member-7-101 .state")).to_have_text("paused")
    await expect(next_up).to_have_attribute("data-user", "102")
    request = {
        "requestId": f"console-{uuid.uuid4().hex}",
        "prospect": {"id": 7001, "email": "rr@example.com"},
        "action": {"kind": "assign_to_group", "groupId": 7},
    }
    assert (await api.post(f"{T}/assignment-requests", key="write", json=request)).is_success

    async def assigned() -> bool:
        found = await api.get(f"{T}/records/prospect/7001", key="read")
        return found.status_code == 200 and found.json()["aeAssignedUserId"] is not None

    await eventually(assigned)
    record = (await api.get(f"{T}/records/prospect/7001", key="read")).json()
    assert record["aeAssignedUserId"] == 102
    await page.reload()
    await expect(page.locator("#member-7-102 .today")).to_have_text("1")
    await expect(page.locator("#member-7-101 .state")).to_have_text("paused")


async def test_replay_a_dead_letter_and_the_syncer_applies_it(
    stack: Running, api: Api, browser: Browser
) -> None:
    event = await park_dead_letter(api, "delivery limit 3 reached: database timeout")
    page = await open_page(browser)
    await sign_in(page, api, "admin")
    await page.get_by_role("link", name="Dead letters", exact=True).click()
    letter = page.locator("article.letter").filter(has_text=str(event.event_id))
    await expect(letter.locator(".reason")).to_have_text(
        "delivery limit 3 reached: database timeout"
    )
    await letter.get_by_role("button", name=f"Replay dead letter {event.event_id}").click()
    await expect(page.get_by_role("status").first).to_have_text("Replayed 1.")
    await expect(page.locator("article.letter")).to_have_count(0)

    async def applied() -> bool:
        found = await api.get(f"{T}/records/sf/{event.payload.record_id}", key="read")
        return found.status_code == 200

    await eventually(applied)


async def test_every_page_passes_axe_at_1280_and_390_pixels_and_is_screenshotted(
    stack: Running, api: Api, browser: Browser
) -> None:
    await story(stack)
    await park_dead_letter(api, "unknown tenant")
    SHOTS.mkdir(parents=True, exist_ok=True)
    pages = {
        "overview": "/console",
        "records": f"/console/records?q={KIM}",
        "users": "/console/users",
        "round-robin": "/console/round-robin",
        "dead-letters": "/console/dead-letters",
        "setup": "/console/setup",
    }
    found: dict[str, list[dict[str, Any]]] = {}
    for width in WIDTHS:
        page = await open_page(browser, width)
        await page.goto(f"{api.url}/console/sign-in")
        found[f"sign-in@{width}"] = await axe_violations(page)
        await page.screenshot(path=str(SHOTS / f"sign-in-{width}.png"), full_page=True)
        await sign_in(page, api, "admin")
        for name, path in pages.items():
            await page.goto(f"{api.url}{path}")
            await expect(page.get_by_role("main")).to_be_visible()
            found[f"{name}@{width}"] = await axe_violations(page)
            await page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
            # No page is wider than the window: nothing needs a sideways scroll but a table.
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (name, width, overflow)
    (SHOTS / "axe-results.json").write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    assert found == {k: [] for k in found}, json.dumps(found, indent=2)


async def test_the_console_works_from_the_keyboard(
    stack: Running, api: Api, browser: Browser
) -> None:
    page = await open_page(browser)
    await page.goto(f"{api.url}/console/sign-in")
    await page.keyboard.press("Tab")
    await expect(page.locator(":focus")).to_have_text("Skip to content")
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")
    await expect(page.locator(":focus")).to_have_attribute("id", "api_key")
    await page.keyboard.type(api.keys["write"])
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Overview of {ACME}")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")  # the skip link
    await page.keyboard.press("Tab")
    await expect(page.locator(":focus")).to_have_text("Dead letters and held effects")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Dead letters and held effects")
