"""Placement by predicted time, once the fleet has measured the model: prefill, decode, load
and the wait for a slot, per node; the reason gives the numbers."""

from __future__ import annotations

from attrs import evolve

from sollol_core.affinity import PromptCache
from sollol_core.builtin import placement
from sollol_core.builtin.prediction import DEFAULT_OUTPUT, Work, prior
from sollol_core.queue import Running, RunningBook
from sollol_core.testing import fleet, node
from sollol_core.types import Decision, FleetSnapshot, InferenceRequest, Performance

MODEL = "llama3.2"


def chat(words: int = 10, **options: int) -> InferenceRequest:
    body = {"options": options} if options else {}
    return InferenceRequest.chat(MODEL, [{"role": "user", "content": "word " * words}], **body)


def measured(key: str, *, decode: float, prefill: float = 2000.0, latency_ms: float = 500.0,
             load_ms: float | None = None, output: float = 100.0) -> Performance:
    return Performance(node=key, model=MODEL, latency_ms=latency_ms, tokens_per_s=decode,
                       samples=5, prefill_tokens_per_s=prefill, load_ms=load_ms,
                       output_tokens=output)


def decide(snapshot: FleetSnapshot, request: InferenceRequest) -> Decision:
    return placement.sollol_place(request, snapshot)


def key(name: str) -> str:
    return node(name).endpoint.key


def test_the_faster_node_wins_and_the_reason_gives_the_prediction() -> None:
    nodes = fleet(node("fast", loaded=[MODEL]), node("slow", loaded=[MODEL]))
    snapshot = evolve(nodes, performance=(measured(key("fast"), decode=100.0),
                                          measured(key("slow"), decode=20.0)))
    decision = decide(snapshot, chat())
    assert decision.target is not None and decision.target.host == "fast"
    # 100 output tokens at 100/s after a 12-token prompt ("word " * 10) at 2,000/s
    assert decision.reason == (
        "earliest end of 2 holding the model: expected first token 0.01 s, end 1.01 s (12 prompt "
        "tokens at 2,000/s, 100 tokens at 100/s); next best 0.01 s to the first token, 5.01 s "
        "to the end")


def test_a_full_fast_node_loses_to_an_idle_slow_one_when_the_wait_costs_more() -> None:
    fast = node("fast", loaded=[MODEL], parallel=1, in_flight=1)
    nodes = fleet(fast, node("slow", loaded=[MODEL], parallel=1))
    performance = (measured(key("fast"), decode=100.0, latency_ms=20_000.0),
                   measured(key("slow"), decode=50.0))
    decision = decide(evolve(nodes, performance=performance), chat())
    assert decision.target is not None and decision.target.host == "slow"
    # a short wait is worth it
    short = (measured(key("fast"), decode=100.0, latency_ms=300.0),
             measured(key("slow"), decode=50.0))
    decision = decide(evolve(nodes, performance=short), chat())
    assert decision.target is not None and decision.target.host == "fast"
    assert "0.30 s waiting for a slot" in decision.reason


def test_a_long_prompt_goes_where_prefill_is_fast() -> None:
    nodes = fleet(node("prefill", loaded=[MODEL]), node("decode", loaded=[MODEL]))
    performance = (measured(key("prefill"), decode=40.0, prefill=5000.0),
                   measured(key("decode"), decode=60.0, prefill=500.0))
    decision = decide(evolve(nodes, performance=performance), chat(4000, num_predict=16))
    assert decision.target is not None and decision.target.host == "prefill"
    decision = decide(evolve(nodes, performance=performance), chat(10, num_predict=500))
    assert decision.target is not None and decision.target.host == "decode"


def test_loading_counts_for_a_node_that_does_not_have_the_model_in_memory() -> None:
    nodes = fleet(node("cold", models=[MODEL]), node("warm", loaded=[MODEL]))
    performance = (measured(key("cold"), decode=100.0, load_ms=5000.0),
                   measured(key("warm"), decode=50.0))
    decision = decide(evolve(nodes, performance=performance), chat())
    assert decision.target is not None and decision.target.host == "warm"


def test_an_unmeasured_node_gets_the_fleets_medians_and_is_tried_when_close() -> None:
    nodes = fleet(node("known", loaded=[MODEL]), node("new", loaded=[MODEL]))
    decision = decide(evolve(nodes, performance=(measured(key("known"), decode=50.0),)), chat())
    assert decision.target is not None and decision.target.host == "new"
    assert "not measured yet: the fleet's medians" in decision.reason
    much_faster = (measured(key("known"), decode=500.0),
                   measured(key("x"), decode=20.0))  # medians: 260 tok/s
    decision = decide(evolve(nodes, performance=much_faster), chat())
    assert decision.target is not None and decision.target.host == "known"


def test_without_any_rates_the_free_room_decides_as_before() -> None:
    nodes = fleet(node("a", loaded=[MODEL], in_flight=3), node("b", loaded=[MODEL]))
    only_latency = (Performance(node=key("a"), model=MODEL, latency_ms=10.0, samples=3),)
    decision = decide(evolve(nodes, performance=only_latency), chat())
    assert decision.target is not None and decision.target.host == "b"
    assert decision.reason.startswith("best of 2 holding the model")


def test_the_work_is_read_from_the_request() -> None:
    unsaid = prior([measured("n", decode=1.0, output=0.0)])
    assert unsaid is not None
    assert Work.of(chat(words=100), unsaid).prompt_tokens == len("word " * 100) / 4
    assert Work.of(chat(num_predict=7), unsaid).output_tokens == 7
    assert Work.of(chat(), unsaid).output_tokens == DEFAULT_OUTPUT
    said = prior([measured("n", decode=1.0, output=40.0), measured("m", decode=1.0, output=60.0)])
    assert said is not None and Work.of(chat(), said).output_tokens == 50


def test_requests_already_waiting_for_a_node_count_as_its_queue() -> None:
    """Requests in SOLLOL's own queue for the fast node will run there first: with enough of
    them, the next request is better off on the idle slow node."""
    from sollol_core.queue import Waiting

    nodes = fleet(node("fast", loaded=[MODEL], parallel=1, in_flight=1),
                  node("slow", loaded=[MODEL], parallel=1))
    performance = (measured(key("fast"), decode=100.0, latency_ms=1000.0),
                   measured(key("slow"), decode=40.0))
    snapshot = evolve(nodes, performance=performance)
    alone = decide(snapshot, chat())
    assert alone.target is not None and alone.target.host == "fast"
    crowded = decide(evolve(snapshot, facts={Waiting: Waiting({key("fast"): 3})}), chat())
    assert crowded.target is not None and crowded.target.host == "slow"


def test_a_stream_goes_where_its_first_token_comes_first_unless_that_node_then_crawls() -> None:
    # "cached" holds most of a long prompt but decodes at under a third of "fresh"'s speed
    nodes = fleet(node("cached", loaded=[MODEL]), node("fresh", loaded=[MODEL]))
    performance = (measured(key("cached"), decode=30.0, prefill=1000.0),
                   measured(key("fresh"), decode=100.0, prefill=1000.0))
    snapshot = evolve(nodes, performance=performance,
                      facts={PromptCache: PromptCache({key("cached"): 1900.0}, 2000.0)})
    words = 1600  # about 2,000 tokens at 4 characters each ("word ")
    whole = decide(snapshot, chat(words, num_predict=40))
    assert whole.target is not None and whole.target.host == "cached"  # ends first too
    streamed = InferenceRequest.chat(MODEL, [{"role": "user", "content": "word " * words}],
                                     stream=True, options={"num_predict": 200})
    # whole: fresh ends first (2 s prefill + 2 s decode against 0.1 + 6.7 s)
    assert decide(snapshot, chat(words, num_predict=200)).target.host == "fresh"  # type: ignore[union-attr]
    # a stream: its reader sees the first token at 0.1 s instead of 2 s, and the end is
    # within twice the earliest
    decision = decide(snapshot, streamed)
    assert decision.target is not None and decision.target.host == "cached"
    assert decision.reason.startswith("earliest first token of 2 holding the model: expected "
                                      "first token 0.10 s")
    # unless it crawls: at 1,000 tokens the cached node would end after twice fresh's end
    # (33 s against 12 s)
    crawl = InferenceRequest.chat(MODEL, [{"role": "user", "content": "word " * words}],
                                  stream=True, options={"num_predict": 1000})
    assert decide(snapshot, crawl).target.host == "fresh"  # type: ignore[union-attr]


def test_the_wait_on_a_full_node_is_until_what_runs_there_is_expected_to_end() -> None:
    fast = node("fast", loaded=[MODEL], parallel=1, in_flight=1)
    nodes = fleet(fast, node("slow", loaded=[MODEL], parallel=1))
    performance = (measured(key("fast"), decode=100.0, latency_ms=300.0),
                   measured(key("slow"), decode=50.0))
    # on average a request takes 0.3 s there, but the one running now has 10 s to go
    long = evolve(nodes, performance=performance,
                  facts={Running: Running({key("fast"): (10.0,)})})
    decision = decide(long, chat())
    assert decision.target is not None and decision.target.host == "slow"
    assert "next best 10.01 s to the first token" in decision.reason
    # nearly done: worth the wait
    short = evolve(nodes, performance=performance,
                   facts={Running: Running({key("fast"): (0.2,)})})
    decision = decide(short, chat())
    assert decision.target is not None and decision.target.host == "fast"
    assert "0.20 s waiting for a slot" in decision.reason
    # the decision says how long the node will be busy with it once started
    assert decision.service_s is not None and abs(decision.service_s - 1.006) < 0.001


def test_what_runs_is_told_to_placement_only_for_nodes_that_are_full() -> None:
    book = RunningBook()
    book.started("a", 1, expected_end=110.0)
    book.started("a", 2, expected_end=104.0)
    book.started("b", 3, expected_end=120.0)
    running = book.running(100.0, full=lambda node: node == "a")
    assert running == Running({"a": (4.0, 10.0)})  # soonest first; b has a free slot
    assert book.running(100.0, full=lambda node: False) is None
    book.ended("a", 1)
    book.ended("a", 2)
    assert book.running(200.0, full=lambda node: True) == Running({"b": (0.0,)})  # overdue
