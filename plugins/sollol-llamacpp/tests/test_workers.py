"""Local RPC workers SOLLOL starts: loopback by default, supervised, stopped with their owner."""

from __future__ import annotations

import asyncio

import psutil
import pytest
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.rpc_probe import probe_rpc
from sollol_llamacpp.workers import WorkerError, WorkerPool


async def test_workers_start_on_loopback_restart_after_a_crash_and_stop(
        binaries: Binaries) -> None:
    pool = WorkerPool(binaries)
    try:
        endpoints = await pool.start(2, first_port=50252, threads=2)
        assert [e.host for e in endpoints] == ["127.0.0.1", "127.0.0.1"]
        assert all(e.port >= 50252 for e in endpoints) and len({e.port for e in endpoints}) == 2
        for endpoint in endpoints:
            assert (await probe_rpc(endpoint.host, endpoint.port)).state == "ok"
        crashed = pool.workers[0]
        crashed.child.process.kill()
        for _ in range(100):
            if pool.workers[0].child.alive and pool.workers[0] is not crashed:
                break
            await asyncio.sleep(0.1)
        restarted = pool.workers[0]
        assert restarted.port == crashed.port and restarted.restarts == 1
        assert (await probe_rpc("127.0.0.1", restarted.port)).state == "ok"
        # the restarted process runs with what the first one was given, threads included
        command = psutil.Process(restarted.child.pid).cmdline()
        assert command[1:] == ["-H", "127.0.0.1", "-p", str(crashed.port), "-t", "2"]
        pids = [w.child.pid for w in pool.workers]
    finally:
        await pool.stop()
    assert not [pid for pid in pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert pool.workers == []


async def test_a_non_loopback_address_needs_an_explicit_choice(binaries: Binaries) -> None:
    pool = WorkerPool(binaries)
    with pytest.raises(WorkerError, match=r"unauthenticated.*--allow-remote"):
        await pool.start(1, host="192.0.2.10")
    assert pool.workers == []


async def test_a_worker_that_cannot_start_names_its_log(binaries: Binaries) -> None:
    pool = WorkerPool(binaries)
    try:
        (endpoint,) = await pool.start(1, first_port=50352)
        with pytest.raises(WorkerError, match="log: "):
            # the same port again: the second worker cannot bind it
            await pool._launch("127.0.0.1", endpoint.port, pool.workers[0].argv)
    finally:
        await pool.stop()


async def test_sweep_finds_workers_that_answer_hello_and_nothing_else(
        binaries: Binaries) -> None:
    from sollol_llamacpp.sweep import RpcSweep

    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    pool = WorkerPool(binaries)
    silent = await asyncio.start_server(lambda r, w: None, hosts[2], 50552)
    try:
        for host in hosts[:2]:
            await pool.start(1, host=host, first_port=50552)
        found = await RpcSweep().sweep(["127.0.0.0/29"], 0.5, port=50552)
    finally:
        silent.close()
        await silent.wait_closed()
        await pool.stop()
    assert sorted(e.address for e in found) == ["127.0.0.2:50552", "127.0.0.3:50552"]
    assert {e.source for e in found} == {"network"}
