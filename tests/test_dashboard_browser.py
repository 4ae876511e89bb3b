"""The dashboard in a real browser: Debian's headless chromium, driven by Playwright.

Needs ``chromium`` on PATH (``apt-get install chromium``); Playwright's own browser downloads are
not used. Without chromium this test fails and says so: it is part of the suite, not optional.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from attrs import evolve
from playwright.async_api import Browser, async_playwright, expect

from sollol_core.config import PluginSettings, Settings
from sollol_core.gateway.app import create_app
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import StaticBackend, node
from sollol_core.types import Health

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

#: Runs before the page's own script (Playwright's init scripts are exempt from the page's CSP).
CSP_WATCH = """window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  e => window.cspViolations.push(e.violatedDirective + " " + e.blockedURI));"""


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail("the dashboard's browser test needs Debian's chromium: "
                    "apt-get install -y chromium (no chromium on PATH nor at /usr/bin/chromium)")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS,
                                                    headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def serve(router: Router) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_app(router), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def test_the_page_shows_the_fleet_and_a_node_going_down_without_reload(
        browser: Browser) -> None:
    backend = StaticBackend([node("a", models=["m"], loaded=["m"]), node("b", models=["m"]),
                             node("c", models=["other"])])
    router = Router.create(Settings.load(environ={}, flags={"gateway.api_keys": ["k"]}),
                           Plugins.load(PluginSettings(load=()), extra=[("static", backend)]))
    runner, url = await serve(router)
    try:
        page = await browser.new_page()
        problems: list[str] = []  # what would show the page broken by its own CSP
        page.on("console", lambda message: problems.append(message.text) if message.type in (
            "error", "warning") else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        await page.add_init_script(CSP_WATCH)
        response: Any = await page.goto(f"{url}/dashboard?key=k")
        assert "default-src 'none'" in response.headers["content-security-policy"]
        cards = page.locator(".node")
        await expect(cards).to_have_count(3)
        b = page.locator('[data-node="static://b:11434"]')
        await expect(b.locator(".health")).to_have_text("up")
        await expect(b.locator(".circuit")).to_have_text("circuit closed")
        await expect(page.locator('[data-node="static://a:11434"] .model.loaded')).to_have_text(
            "m")
        await expect(b.locator(".mem")).to_contain_text("8.0 GiB free of 16.0 GiB")
        assert "key=" not in page.url  # the key left the address bar
        await page.evaluate("window.notReloaded = true")

        async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as client:
            answer = await client.post(f"{url}/api/chat", json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status == 200
            reason = answer.headers["X-Sollol-Reason"]
        row = page.locator("tr.decision").first
        await expect(row).to_contain_text(reason)
        await expect(row.locator(".badge")).to_have_text("ok")
        await expect(page.locator("#s-requests")).to_have_text("1")

        backend.nodes = [backend.nodes[0], evolve(backend.nodes[1], health=Health.DOWN,
                                                  detail="connection refused"),
                         backend.nodes[2]]
        await router.fleet.refresh()
        await expect(b.locator(".health")).to_have_text("down", timeout=5000)
        await expect(b).to_have_attribute("data-health", "down")
        await expect(b).to_contain_text("connection refused")
        await expect(page.locator("#s-up")).to_have_text("2/3")
        assert await page.evaluate("window.notReloaded") is True
        await expect(page.locator("#conn")).to_contain_text("live")
        (cookie,) = await page.context.cookies()
        assert cookie["httpOnly"] and "k" not in cookie["value"].split(".")  # a session, no key
        assert await page.evaluate("window.cspViolations") == []
        assert problems == []
    finally:
        await runner.cleanup()


async def test_without_the_key_the_page_is_refused(browser: Browser) -> None:
    router = Router.create(Settings.load(environ={}, flags={"gateway.api_keys": ["k"]}),
                           Plugins.load(PluginSettings(load=()),
                                        extra=[("static", StaticBackend([node("a")]))]))
    runner, url = await serve(router)
    try:
        page = await browser.new_page()
        response: Any = await page.goto(f"{url}/dashboard")
        assert response is not None and response.status == 401
        await expect(page.locator(".node")).to_have_count(0)
    finally:
        await runner.cleanup()
