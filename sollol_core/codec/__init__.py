"""Ollama ⇄ OpenAI: one codec for both directions, pure functions (no I/O).

SOLLOL speaks Ollama inside (requests, chunks). ``encode_*`` turns Ollama's shapes into OpenAI's,
``decode_*`` turns OpenAI's into Ollama's; each mapping keeps both directions side by side:

- :mod:`~sollol_core.codec.requests`: sampling options (one table: ``num_predict`` is
  ``max_tokens``...), ``format``/``response_format``, ``think``/``reasoning_effort``, whole
  chat, completion and embedding requests;
- :mod:`~sollol_core.codec.messages`: messages (images, thinking, tool results) and tool calls
  (arguments an object / a JSON string);
- :mod:`~sollol_core.codec.replies`: finish reasons (one table), ``usage``/counts, whole
  replies;
- :mod:`~sollol_core.codec.streams`: streamed replies, chunk by chunk.

The gateway decodes what OpenAI clients send and encodes what it answers them
(:mod:`sollol_core.gateway.openai`); a backend that speaks OpenAI (llama-server) encodes what it
sends and decodes what comes back (``sollol_llamacpp.bridge``). A decoded request is checked
(:class:`InvalidRequest`); an encoded one is our own, already checked, data.
"""

from sollol_core.codec.base import Chunk, InvalidRequest, dumps, now_rfc3339
from sollol_core.codec.messages import (
    DATA_URL,
    IMAGE_PREFIXES,
    decode_messages,
    decode_reply_tool_calls,
    decode_tool_calls,
    encode_message,
    encode_messages,
    encode_reply_tool_calls,
    encode_tool_calls,
)
from sollol_core.codec.replies import (
    DONE_REASONS,
    FINGERPRINT,
    FINISH_REASONS,
    Kind,
    decode_embed_reply,
    decode_finish,
    decode_reply,
    decode_usage,
    encode_chat_reply,
    encode_completion_reply,
    encode_embed_reply,
    encode_finish,
    encode_usage,
    model_of,
    piece,
    text_of,
)
from sollol_core.codec.requests import (
    EXTRA_OPTIONS,
    OPENAI_DEFAULTS,
    OPTIONS,
    REASONING_EFFORTS,
    decode_chat_request,
    decode_completion_request,
    decode_embed_request,
    decode_format,
    decode_options,
    decode_think,
    encode_chat_request,
    encode_completion_request,
    encode_embed_request,
    encode_format,
    encode_options,
    encode_think,
)
from sollol_core.codec.streams import Event, StreamDecoder, StreamEncoder

__all__ = [
    "DATA_URL", "DONE_REASONS", "EXTRA_OPTIONS", "FINGERPRINT", "FINISH_REASONS",
    "IMAGE_PREFIXES", "OPENAI_DEFAULTS", "OPTIONS", "REASONING_EFFORTS", "Chunk", "Event",
    "InvalidRequest", "Kind", "StreamDecoder", "StreamEncoder", "decode_chat_request",
    "decode_completion_request", "decode_embed_reply", "decode_embed_request", "decode_finish",
    "decode_format", "decode_messages", "decode_options", "decode_reply",
    "decode_reply_tool_calls", "decode_think", "decode_tool_calls", "decode_usage", "dumps",
    "encode_chat_reply", "encode_chat_request", "encode_completion_reply",
    "encode_completion_request", "encode_embed_reply", "encode_embed_request", "encode_finish",
    "encode_format", "encode_message", "encode_messages", "encode_options",
    "encode_reply_tool_calls", "encode_think", "encode_tool_calls", "encode_usage", "model_of",
    "now_rfc3339", "piece", "text_of",
]
