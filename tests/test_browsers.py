"""The browser guard shared by the gateway and the agent: which origins, Host names and body
types it lets through (Ollama's rules)."""

from __future__ import annotations

import socket

import pytest

from sollol_core.browsers import BrowserGuard


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://localhost", True), ("http://localhost:3000", True), ("https://127.0.0.1:8443", True),
    ("http://[::1]:5173", True), ("app://obsidian.md", True), ("file://", True),
    ("vscode-webview://abc", True), ("https://evil.example", False), ("null", False),
    ("http://localhost.evil.example", False), ("http://127.0.0.1.nip.io", False),
])
def test_only_loopback_and_local_app_origins_by_default(origin: str, allowed: bool) -> None:
    assert BrowserGuard.for_listener("127.0.0.1").origin_allowed(origin) is allowed


def test_configured_origins_take_wildcards() -> None:
    guard = BrowserGuard.for_listener("127.0.0.1", origins=["https://chat.example.com",
                                                            "http://10.0.0.5:*"])
    assert guard.origin_allowed("https://chat.example.com")
    assert guard.origin_allowed("http://10.0.0.5:8080")
    assert not guard.origin_allowed("https://chat.example.com.evil.example")


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1:11435", True), ("localhost", True), ("[::1]:11435", True),
    ("192.168.1.4:11435", True), ("app.localhost", True), ("box.local:1", True),
    (f"{socket.gethostname()}:11435", True), ("evil.example:11435", False),
    ("evil.example", False), ("8.8.8.8", False),
])
def test_a_loopback_listener_answers_only_local_host_names(host: str, allowed: bool) -> None:
    guard = BrowserGuard.for_listener("127.0.0.1")
    assert guard.host_allowed(host) is allowed
    assert (guard.refusal("GET", {"Host": host}) is None) is allowed


def test_other_listeners_and_configured_names_skip_the_host_check() -> None:
    assert BrowserGuard.for_listener("0.0.0.0").host_allowed("sollol.example.com")
    guard = BrowserGuard.for_listener("127.0.0.1", hosts=["Sollol.LAN"])
    assert guard.host_allowed("sollol.lan:11435") and not guard.host_allowed("other.lan")


@pytest.mark.parametrize(("headers", "status"), [
    ({}, None),
    ({"Content-Type": "application/json"}, None),
    ({"Content-Type": "application/json; charset=utf-8"}, None),
    ({"Content-Type": "application/octet-stream"}, None),  # a browser must ask first
    ({"Content-Type": "application/x-www-form-urlencoded"}, None),  # curl -d
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Mode": "no-cors"}, 415),
    ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403),
])
def test_json_routes_refuse_what_a_page_can_send_without_asking(
        headers: dict[str, str], status: int | None) -> None:
    refusal = BrowserGuard.for_listener("127.0.0.1").refusal(
        "POST", {"Host": "127.0.0.1:11435", **headers})
    assert (refusal[0] if refusal else None) == status
