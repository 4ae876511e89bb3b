"""Slots learnt from how a node answers (Ollama's durations, "server busy")."""

from __future__ import annotations

from sollol_core.capacity import CapacityBook, queued_ns

MS = 1_000_000


def final(*, queued_ms: float, work_ms: float = 100) -> dict[str, int]:
    """Ollama's last chunk: ``total_duration`` is the parts plus the time it queued."""
    prompt, generate, load = int(work_ms * MS / 4), int(work_ms * MS * 3 / 4), 2 * MS
    return {"total_duration": load + prompt + generate + int(queued_ms * MS),
            "load_duration": load, "prompt_eval_duration": prompt, "eval_duration": generate}


def test_queueing_inside_the_node_lowers_its_slots_and_serving_more_raises_them() -> None:
    changed: list[str] = []
    book = CapacityBook(on_change=changed.append)
    book.served("n", 3, final(queued_ms=0))  # 3 at once without waiting: at least 3
    assert book.slots("n", 1) == 3 and book.slots("n", 4) == 4
    book.served("n", 4, final(queued_ms=400))  # the 4th waited: at most 3
    assert book.slots("n", 4) == 3 and book.slots("n", 8) == 3
    book.served("n", 2, final(queued_ms=300))  # now even the 2nd waits (another client?)
    assert book.slots("n", 4) == 1
    book.served("n", 3, final(queued_ms=0))  # and later 3 run at once again
    assert book.slots("n", 1) == 3
    assert changed == ["n"] * 4


def test_short_waits_and_missing_durations_teach_nothing() -> None:
    book = CapacityBook()
    book.served("n", 2, final(queued_ms=10))  # 10 ms: scheduling noise
    book.served("n", 5, {"eval_count": 3})  # no durations (a llama-server without timings)
    book.served("n", 5, None)
    assert not book.knows("m") and book.slots("n", 2) == 2
    assert queued_ns(final(queued_ms=0)) == 0 and queued_ns({}) is None


def test_server_busy_means_fewer_than_were_sent() -> None:
    book = CapacityBook()
    book.refused("n", 3)
    assert book.slots("n", 8) == 2
    book.refused("n", 1)  # never below one
    assert book.slots("n", 8) == 1


def test_a_lowered_number_is_forgotten_after_a_while() -> None:
    """Admission then holds the node to the lowered number, so nothing would ever raise it
    again: after ``forget_s`` SOLLOL tries the setting once more (and learns again if needed)."""
    import time

    book = CapacityBook(forget_s=600.0)
    book.refused("n", 3)
    now = time.monotonic()
    assert book.slots("n", 4, now=now + 10) == 2
    assert book.slots("n", 4, now=now + 601) == 4
    book.refused("n", 3)  # the node is still busy: learnt again at once
    assert book.slots("n", 4) == 2
