"""JSON on the request path takes everything the standard library took (clients and nodes may
send integers past 64 bits or NaN) and keeps text as UTF-8, as Ollama writes it."""

from __future__ import annotations

import json

import pytest

from sollol_core import wirejson


def test_integers_past_64_bits_are_read_and_written_unchanged() -> None:
    body = b'{"model":"m","options":{"seed":340282366920938463463374607431768211457}}'
    parsed = wirejson.loads(body)
    assert parsed["options"]["seed"] == 2**128 + 1
    assert wirejson.loads(wirejson.dumps(parsed)) == parsed


def test_non_ascii_text_stays_utf8_and_keys_that_are_not_strings_still_encode() -> None:
    assert wirejson.dumps({"response": "grüß 東京"}) == '{"response":"grüß 東京"}'.encode()
    assert wirejson.loads(wirejson.dumps({1: "a"})) == {"1": "a"}


def test_nan_from_a_node_is_read_as_the_standard_library_reads_it() -> None:
    assert wirejson.loads(b'{"x": NaN}')["x"] != wirejson.loads(b'{"x": NaN}')["x"]


def test_malformed_json_keeps_the_standard_librarys_message() -> None:
    with pytest.raises(json.JSONDecodeError, match=r"line 1 column 10"):
        wirejson.loads(b'{"model":}')


def test_objects_json_cannot_hold_go_through_default() -> None:
    class Point:
        def __init__(self) -> None:
            self.x = 1

    assert wirejson.dumps({"p": Point()}, default=lambda o: vars(o)) == b'{"p":{"x":1}}'
