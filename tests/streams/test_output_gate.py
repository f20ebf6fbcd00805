"""Outputs before state (streams/output_gate.py): a flush waits for the outputs of the batches
whose state changes it writes, and only those."""

from __future__ import annotations

import asyncio

import pytest

from streams.output_gate import OutputGate


def test_the_flush_waits_for_the_outputs_of_the_batches_open_when_it_serialized() -> None:
    async def scenario() -> list[str]:
        gates = OutputGate()
        loop = asyncio.get_running_loop()
        order: list[str] = []
        sent_a: asyncio.Future[None] = loop.create_future()
        gate_a = gates.open()  # batch A changed states; its risk events are in flight

        async def send_a() -> list[asyncio.Future[None]]:
            return [sent_a]

        await gates.through(gate_a, send_a())

        async def flush() -> None:
            await gates.delivered()
            order.append("state written")

        flushing = asyncio.ensure_future(flush())
        await asyncio.sleep(0)  # the flush serializes and starts waiting
        gates.open()  # batch B, after the flush serialized: not waited for
        await asyncio.sleep(0.01)
        assert not flushing.done() and len(gates) == 2
        order.append("A delivered")
        sent_a.set_result(None)
        await asyncio.wait_for(flushing, 1.0)
        return order

    assert asyncio.run(scenario()) == ["A delivered", "state written"]


def test_a_failed_batch_fails_the_flush() -> None:
    async def scenario() -> None:
        gates = OutputGate()
        gate = gates.open()

        async def boom() -> list[asyncio.Future[None]]:
            raise ConnectionError("broker gone")

        with pytest.raises(ConnectionError):
            await gates.through(gate, boom())
        with pytest.raises(ConnectionError):
            await gates.delivered()

    asyncio.run(scenario())


def test_delivered_outputs_are_forgotten() -> None:
    async def scenario() -> None:
        gates = OutputGate()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)

        async def sent() -> list[asyncio.Future[None]]:
            return [done]

        for _ in range(3):
            await gates.through(gates.open(), sent())
        await asyncio.sleep(0)
        await gates.delivered()
        assert len(gates) == 0 and not gates._open

    asyncio.run(scenario())
