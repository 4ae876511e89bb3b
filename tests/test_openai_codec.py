"""The Ollama ⇄ OpenAI codec, both ways: what goes out comes back (round trips), and the mapped
values a user would notice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sollol_core import codec
from sollol_core.codec import InvalidRequest

TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather now",
                                           "parameters": {"type": "object"}}}]
OPTIONS = {"temperature": 0.2, "top_p": 0.9, "num_predict": 64, "stop": ["\n\n", "END"],
           "seed": 7, "frequency_penalty": 0.5, "presence_penalty": 0.1}
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is on this picture?"},
    {"role": "user", "content": "", "images": ["iVBORw0KGgo="]},
    {"role": "assistant", "content": "", "thinking": "I should ask the tool.",
     "tool_calls": [{"id": "call_1", "function": {"name": "weather",
                                                   "arguments": {"city": "Oslo", "days": 2}}}]},
    {"role": "tool", "content": "sunny", "tool_name": "weather", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "Sunny in Oslo."},
]


# -- requests: Ollama -> OpenAI -> Ollama ------------------------------------------------------


@pytest.mark.parametrize("fmt", [None, "json", {"type": "object", "properties": {}}])
@pytest.mark.parametrize("think", [None, False, "low", "high"])
def test_a_chat_request_comes_back_whole(fmt: Any, think: Any) -> None:
    body: dict[str, Any] = {"model": "llama3.2", "stream": False, "messages": MESSAGES,
                            "options": OPTIONS, "tools": TOOLS, "logprobs": True,
                            "top_logprobs": 3}
    if fmt is not None:
        body["format"] = fmt
    if think is not None:
        body["think"] = think
    assert codec.decode_chat_request(codec.encode_chat_request(body)) == body


def test_a_generate_request_comes_back_whole() -> None:
    body = {"model": "llama3.2", "stream": True, "prompt": "Once upon", "suffix": "The end.",
            "format": "json", "options": OPTIONS}
    assert codec.decode_completion_request(codec.encode_completion_request(body)) == body


def test_an_embed_request_comes_back_whole() -> None:
    body = {"model": "all-minilm", "input": ["first", "second"], "dimensions": 8}
    assert codec.decode_embed_request(codec.encode_embed_request(body)) == body


def test_llama_server_samplers_go_by_their_ollama_names_and_come_back() -> None:
    options = {"top_k": 40, "min_p": 0.05, "typical_p": 1.0, "repeat_penalty": 1.1,
               "repeat_last_n": 64, "temperature": 0.0, "top_p": 1.0}
    fields = codec.encode_options(options)
    assert fields == options
    assert codec.decode_options(fields) == options


def test_a_message_with_text_and_images_comes_back_split_like_ollama() -> None:
    """OpenAI has one content array; Ollama's OpenAI layer makes one message per part."""
    message = {"role": "user", "content": "look", "images": ["AAAA", "BBBB"]}
    sent = codec.encode_message(message)
    assert sent["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}]
    assert codec.decode_messages([sent]) == [
        {"role": "user", "content": "look"},
        {"role": "user", "content": "", "images": ["AAAA"]},
        {"role": "user", "content": "", "images": ["BBBB"]}]


def test_a_tool_result_finds_its_name_through_the_call_it_answers() -> None:
    sent = codec.encode_messages([MESSAGES[3], {"role": "tool", "content": "sunny",
                                                "tool_call_id": "call_1"}])
    assert "name" not in sent[1]
    assert codec.decode_messages(sent)[1]["tool_name"] == "weather"


# -- requests: values a user would notice ------------------------------------------------------


def test_sampling_fields_map_to_ollama_options() -> None:
    assert codec.encode_options({"num_predict": 5, "num_ctx": 4096, "seed": None}) == {
        "max_tokens": 5}  # options OpenAI has no field for stay behind
    assert codec.decode_options({"max_tokens": 5}) == {
        "num_predict": 5, "temperature": 1.0, "top_p": 1.0}  # OpenAI's defaults, stated
    assert codec.decode_options({"max_tokens": 5, "max_completion_tokens": 9, "stop": "x",
                                 "temperature": 0})["num_predict"] == 9
    assert codec.decode_options({"stop": "x", "temperature": 0}) == {
        "stop": ["x"], "temperature": 0, "top_p": 1.0}
    with pytest.raises(InvalidRequest, match="invalid type for 'stop' field"):
        codec.decode_options({"stop": [1]})


def test_format_and_reasoning_map_both_ways() -> None:
    assert codec.encode_format("json") == {"type": "json_object"}
    assert codec.encode_format({"type": "object"}) == {
        "type": "json_schema", "json_schema": {"schema": {"type": "object"}}}
    assert codec.decode_format({"type": "json_object"}) == "json"
    assert codec.decode_format({"type": "text"}) is None
    assert [codec.encode_think(t) for t in (True, False, "low", "max")] == [
        "medium", "none", "low", "high"]
    assert [codec.decode_think(e) for e in ("none", "low", None)] == [False, "low", None]
    with pytest.raises(InvalidRequest, match="invalid reasoning value"):
        codec.decode_think("max")


def test_tool_call_arguments_are_an_object_in_ollama_and_a_string_in_openai() -> None:
    calls = [{"function": {"name": "f", "arguments": {"city": "Zürich", "n": 1}}}]
    sent = codec.encode_tool_calls(calls)
    assert sent == [{"id": "call_0", "type": "function",
                     "function": {"name": "f", "arguments": '{"city":"Zürich","n":1}'}}]
    assert codec.decode_tool_calls(sent) == [{"id": "call_0", **calls[0]}]
    reply = codec.encode_reply_tool_calls(calls, first_index=2)
    assert reply[0]["index"] == 2 and reply[0]["id"].startswith("call_")
    assert len(reply[0]["id"]) == len("call_") + 8
    assert codec.decode_reply_tool_calls([{"function": {"name": "f", "arguments": "{oops"}}]) == [
        {"id": "call_0", "function": {"index": 0, "name": "f", "arguments": {"raw": "{oops"}}}]
    with pytest.raises(InvalidRequest, match="invalid tool call arguments"):
        codec.decode_tool_calls([{"function": {"name": "f", "arguments": "[1]"}}])


def test_requests_are_checked_when_decoded() -> None:
    with pytest.raises(InvalidRequest, match="model is required"):
        codec.decode_chat_request({"messages": MESSAGES})
    with pytest.raises(InvalidRequest, match="too short"):
        codec.decode_chat_request({"model": "m", "messages": []})
    with pytest.raises(InvalidRequest, match="invalid image input"):
        codec.decode_messages([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    with pytest.raises(InvalidRequest, match="invalid encoding format"):
        codec.decode_embed_request({"model": "m", "input": "x", "encoding_format": "hex"})


# -- replies: OpenAI -> Ollama -> OpenAI -------------------------------------------------------


def _chat_answer(finish: str, message: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": "llama3.2", "system_fingerprint": codec.FINGERPRINT,
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 26, "completion_tokens": 8, "total_tokens": 34}}


@pytest.mark.parametrize(("finish", "message"), [
    ("stop", {"content": "Hello!"}),
    ("length", {"content": "Hel", "reasoning": "Greet them."}),
    ("tool_calls", {"content": "", "tool_calls": [
        {"id": "call_k3x9p2ab", "index": 0, "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "call_a1b2c3d4", "index": 1, "type": "function",
         "function": {"name": "time", "arguments": "{}"}}]}),
])
def test_a_chat_answer_comes_back_whole(finish: str, message: dict[str, Any]) -> None:
    answer = _chat_answer(finish, message)
    chunk = codec.decode_reply(answer, model="llama3.2", chat=True)
    assert chunk["done"] is True and chunk["done_reason"] == ("length" if finish == "length"
                                                              else "stop")
    assert (chunk["prompt_eval_count"], chunk["eval_count"]) == (26, 8)
    back = codec.encode_chat_reply([chunk], id="chatcmpl-1", model="llama3.2")
    assert back == {**answer, "created": back["created"]}


def test_a_completion_answer_comes_back_whole() -> None:
    answer = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
              "system_fingerprint": codec.FINGERPRINT,
              "choices": [{"text": "Teal.", "index": 0, "logprobs": None,
                           "finish_reason": "length"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    chunk = codec.decode_reply(answer, model="m", chat=False)
    assert chunk["response"] == "Teal." and chunk["done_reason"] == "length"
    back = codec.encode_completion_reply([chunk], id="cmpl-1", model="m")
    assert back == {**answer, "created": back["created"]}


@pytest.mark.parametrize("encoding", [None, "base64"])
def test_an_embedding_answer_comes_back_whole(encoding: str | None) -> None:
    vectors = [[0.5, -0.25, 1.0], [0.125, 0.0, -1.0]]  # exact in float32
    answer = codec.encode_embed_reply([{"embeddings": vectors, "prompt_eval_count": 6}],
                                      model="all-minilm", encoding_format=encoding)
    found = codec.decode_embed_reply(answer)
    assert found == {"embeddings": vectors, "prompt_eval_count": 6}
    assert codec.encode_embed_reply([found], model="all-minilm",
                                    encoding_format=encoding) == answer


def test_finish_reasons_and_usage_map_both_ways() -> None:
    assert [codec.decode_finish(f) for f in ("stop", "length", "tool_calls", None)] == [
        "stop", "length", "stop", "stop"]
    assert [codec.encode_finish({"done_reason": d}, False) for d in ("stop", "length", "load")] \
        == ["stop", "length", "stop"]
    assert codec.encode_finish({"done_reason": "stop"}, True) == "tool_calls"
    counts = {"prompt_eval_count": 26, "eval_count": 8}
    usage = codec.encode_usage(counts)
    assert usage == {"prompt_tokens": 26, "completion_tokens": 8, "total_tokens": 34}
    assert codec.decode_usage(usage) == counts
    assert codec.decode_usage(None) == {}


# -- streams, both ways ------------------------------------------------------------------------


def _relay(chunks: list[dict[str, Any]], kind: codec.Kind) -> list[codec.Event]:
    encoder = codec.StreamEncoder(kind=kind, id="chatcmpl-1", model="m", include_usage=True)
    return [event for chunk in chunks for event in encoder.feed(chunk)] + encoder.close()


def _decode(events: list[Any], chat: bool = True) -> list[dict[str, Any]]:
    decoder = codec.StreamDecoder("m", chat=chat)
    return [chunk for event in events for chunk in decoder.feed(event)] + [decoder.close()]


def _summary(events: list[codec.Event]) -> dict[str, Any]:
    """What a client makes of a stream: text, thinking, tool calls, finish reason, usage."""
    deltas = [c.get("delta") or {"content": c.get("text")} for e in events
              for c in e["choices"]]
    calls = [call for d in deltas for call in d.get("tool_calls") or ()]
    return {"content": "".join(d.get("content") or "" for d in deltas),
            "reasoning": "".join(d.get("reasoning") or "" for d in deltas),
            "tool_calls": [(c["id"], c["index"], c["function"]["name"],
                            json.loads(c["function"]["arguments"])) for c in calls],
            "finish": [c["finish_reason"] for e in events for c in e["choices"]
                       if c["finish_reason"]],
            "usage": [e["usage"] for e in events if "usage" in e]}


def test_a_llama_server_stream_decodes_and_encodes_back() -> None:
    """Tool calls arrive in pieces (the arguments split anywhere); usage comes last."""
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "Ask the tool."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Let me check."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"ci'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_2", "type": "function",
             "function": {"name": "time", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9}},
    ]
    chunks = _decode(events)
    assert [c["done"] for c in chunks] == [False, False, True]
    final = chunks[-1]
    assert final["message"]["tool_calls"] == [
        {"id": "call_1", "function": {"index": 0, "name": "weather",
                                      "arguments": {"city": "Oslo"}}},
        {"id": "call_2", "function": {"index": 1, "name": "time", "arguments": {}}}]
    assert (final["done_reason"], final["prompt_eval_count"], final["eval_count"]) == (
        "stop", 12, 9)
    assert _summary(_relay(chunks, "chat")) == {
        "content": "Let me check.", "reasoning": "Ask the tool.",
        "tool_calls": [("call_1", 0, "weather", {"city": "Oslo"}), ("call_2", 1, "time", {})],
        "finish": ["tool_calls"],
        "usage": [{"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}]}


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_an_ollama_stream_encodes_and_decodes_back(kind: codec.Kind) -> None:
    chat = kind == "chat"

    def piece(text: str, **extra: Any) -> dict[str, Any]:
        body = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
        return {"model": "m", **body, "done": False, **extra}

    calls = [{"id": "call_x", "function": {"index": 0, "name": "f", "arguments": {"a": [1]}}}]
    chunks = [piece("Hel"), piece("lo"),
              piece("", done=True, done_reason="length", prompt_eval_count=4, eval_count=2)]
    if chat:
        chunks[1]["message"]["tool_calls"] = calls
    back = _decode(_relay(chunks, kind), chat)
    text = "".join(c["message"]["content"] if chat else c["response"] for c in back)
    assert text == "Hello" and back[-1]["done"] is True
    assert (back[-1]["done_reason"], back[-1]["prompt_eval_count"], back[-1]["eval_count"]) == (
        "stop" if chat else "length", 4, 2)  # tool calls finish with "tool_calls", read "stop"
    if chat:
        assert back[-1]["message"]["tool_calls"] == calls


def test_a_stream_without_usage_or_finish_still_ends() -> None:
    final = _decode([{"choices": [{"index": 0, "text": "abc"}]}], chat=False)[-1]
    assert final == {"model": "m", "created_at": final["created_at"], "response": "",
                     "done": True, "done_reason": "stop"}


# -- the llama.cpp bridge: the codec plus what is llama-server's -------------------------------


def test_the_llamacpp_bridge_sends_the_codec_body_less_what_llama_server_refuses() -> None:
    bridge = pytest.importorskip("sollol_llamacpp.bridge")
    from sollol_core.types import InferenceRequest

    request = InferenceRequest.chat("gemma3:270m", MESSAGES, stream=False, options=OPTIONS,
                                    tools=TOOLS, think="low", logprobs=True)
    path, body = bridge.to_openai(request)
    expected = codec.encode_chat_request(request.body)
    for field in ("reasoning_effort", "logprobs"):
        del expected[field]
    assert path == "/v1/chat/completions"
    assert body == {**expected, "stream": True, "stream_options": {"include_usage": True}}
    path, body = bridge.to_openai(InferenceRequest.generate("m", "Hi", system="Be brief."))
    assert path == "/v1/chat/completions" and body["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path, body = bridge.to_openai(InferenceRequest.generate("m", "Hi", raw=True,
                                                            options={"num_predict": 3}))
    assert (path, body["prompt"], body["max_tokens"]) == ("/v1/completions", "Hi", 3)


def test_the_llamacpp_bridge_takes_counts_and_durations_from_timings() -> None:
    bridge = pytest.importorskip("sollol_llamacpp.bridge")
    from sollol_core.types import InferenceRequest

    translator = bridge.StreamTranslator(InferenceRequest.chat("m", MESSAGES), 0.0)
    translator.feed({"choices": [{"index": 0, "delta": {"content": "Hi"},
                                  "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 1},
                     "timings": {"prompt_n": 3, "prompt_ms": 1.5, "predicted_n": 1,
                                 "predicted_ms": 2.0}})
    final = translator.close()
    assert final["done_reason"] == "length" and final["load_duration"] == 0
    assert (final["prompt_eval_count"], final["prompt_eval_duration"]) == (3, 1_500_000)
    assert (final["eval_count"], final["eval_duration"]) == (1, 2_000_000)
