"""Circuit breakers and admission, as the router uses them: what opens and closes a circuit,
and who waits for whom."""

from __future__ import annotations

import asyncio

import pytest

from sollol_core.attempt import Outcome, outcome_of
from sollol_core.breaker import Breaker, CircuitState
from sollol_core.chunks import fold
from sollol_core.errors import BackendError, QueueFullError
from sollol_core.queue import AdmissionQueue
from sollol_core.types import Operation


def opened(now: float = 0.0) -> Breaker:
    breaker = Breaker()
    for _ in range(breaker.min_samples):
        breaker.started()
        breaker.record(False, now)
    assert breaker.state is CircuitState.OPEN
    return breaker


def test_a_trial_that_ends_without_a_verdict_frees_the_half_open_slot() -> None:
    breaker = opened()
    assert breaker.allows(breaker.cooldown_s)  # half-open: one trial may go
    breaker.started()
    assert not breaker.allows(breaker.cooldown_s + 1)  # the trial is out
    breaker.abandon()  # its client left
    assert breaker.allows(breaker.cooldown_s + 1)
    assert breaker.state is CircuitState.HALF_OPEN


@pytest.mark.parametrize(("failure", "outcome"), [
    (BackendError("node: bad keep_alive", status=400, retryable=False), Outcome.NEUTRAL),
    (BackendError("node: model not found", status=404), Outcome.NEUTRAL),
    (BackendError("node: emulated failure", status=500), Outcome.FAULT),
    (BackendError("node: unreachable"), Outcome.FAULT),
    (ConnectionResetError(), Outcome.FAULT),
    (TimeoutError(), Outcome.FAULT),
    (asyncio.CancelledError(), Outcome.NEUTRAL),
])
def test_only_the_nodes_own_faults_count_against_it(failure: BaseException,
                                                    outcome: Outcome) -> None:
    assert outcome_of(failure) is outcome


def test_a_probe_closes_a_half_open_circuit_without_risking_a_request() -> None:
    breaker = opened()
    breaker.allows(breaker.cooldown_s)
    breaker.probed(True, breaker.cooldown_s)
    assert breaker.state is CircuitState.CLOSED


def test_a_node_seen_down_then_answering_rejoins_before_its_cool_down_ends() -> None:
    breaker = opened(now=100.0)
    breaker.probed(True, 101.0)  # answers probes but failed requests: stays out
    assert breaker.state is CircuitState.OPEN
    breaker.probed(False, 102.0)  # then it was down (restarted) ...
    breaker.probed(True, 103.0)  # ... and is back
    assert breaker.state is CircuitState.CLOSED and breaker.allows(103.0)


def test_a_node_that_fails_again_after_a_probe_closed_it_waits_longer() -> None:
    breaker = opened(now=0.0)
    breaker.probed(True, breaker.cooldown_s + 0.1)
    assert breaker.state is CircuitState.CLOSED
    for _ in range(breaker.min_samples):
        breaker.record(False, 10.0)
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allows(10.0 + breaker.cooldown_s)  # twice as long this time
    assert breaker.allows(10.0 + 2 * breaker.cooldown_s)


async def test_a_queue_for_one_node_does_not_hold_back_another_nodes_requests() -> None:
    queue = AdmissionQueue(max_size=2)
    waiting = [asyncio.create_task(queue.wait(5, 0.0, "busy:1", timeout=5)) for _ in range(2)]
    await asyncio.sleep(0)
    assert queue.waiting_for("busy:1") == 2 and queue.waiting_for("idle:1") == 0
    with pytest.raises(QueueFullError):  # the bound is shared
        await queue.wait(5, 0.0, "idle:1", timeout=5)
    queue.release("idle:1")  # wakes nobody: nobody waits for it
    assert queue.waiting_for("busy:1") == 2
    queue.release("busy:1")
    assert await waiting[0] is True
    waiting[1].cancel()  # its client left: it leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    assert len(queue) == 0 and queue.waiting_for("busy:1") == 0


def test_fold_joins_streamed_pieces_into_ollamas_one_answer() -> None:
    pieces = [{"model": "m", "message": {"role": "assistant", "content": "", "thinking": "Hm"},
               "done": False},
              {"model": "m", "message": {"role": "assistant", "content": "Hello"}, "done": False},
              {"model": "m", "message": {"role": "assistant", "content": " world"},
               "done": False},
              {"model": "m", "message": {"role": "assistant", "content": "",
                                         "tool_calls": [{"function": {"name": "f"}}]},
               "done": False},
              {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
               "done_reason": "stop", "eval_count": 3}]
    answer = fold(Operation.CHAT, pieces)
    assert answer["message"] == {"role": "assistant", "content": "Hello world", "thinking": "Hm",
                                 "tool_calls": [{"function": {"name": "f"}}]}
    assert answer["done"] is True and answer["eval_count"] == 3
    generated = fold(Operation.GENERATE, [{"response": "a", "done": False},
                                          {"response": "b", "done": False},
                                          {"response": "", "done": True, "context": [1, 2]}])
    assert generated == {"response": "ab", "done": True, "context": [1, 2]}
