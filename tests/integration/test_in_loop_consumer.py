"""Faust's consumer served on the worker's event loop (``streams/in_loop.py``), on the real broker.

The worker tests run it end to end (it is the default); these check what they cannot see: that
no thread is started, that calls run on the loop, and that stopping it leaves the app's other
tasks alone (mode's thread service cancels every task left on its loop when it stops, and here
that loop is the app's).
"""

from __future__ import annotations

import asyncio
import threading
import uuid

from streams.in_loop import InLoopConsumerThread, InLoopTransport
from streams.intake import BatchingApp


def test_the_consumer_runs_on_the_apps_loop_and_stops_without_touching_its_tasks(kafka_broker: str) -> None:
    async def main() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        app = BatchingApp(
            f"in-loop-{uuid.uuid4().hex[:8]}",
            broker=f"kafka://{kafka_broker}",
            transport_type=InLoopTransport,
            fetch_settings=(1, 10),
        )
        thread = app.consumer._thread
        assert isinstance(thread, InLoopConsumerThread)
        bystander = asyncio.ensure_future(asyncio.sleep(3600))  # one of "the app's" tasks
        threads_before = threading.active_count()
        await thread.start()
        try:
            aiokafka_consumer = thread._ensure_consumer()
            seen: dict[str, object] = {
                "threads_started": threading.active_count() - threads_before,
                "thread_loop_is_app_loop": thread.thread_loop is loop,
                # the aiokafka client's connection tasks run on this loop
                "client_loop_is_app_loop": aiokafka_consumer._client._loop is loop,
                # calls into "the thread", awaited directly: a coroutine function and a plain
                # one (Faust's subscribe passes aiokafka's plain subscribe)
                "topics": set(await thread.call_thread(aiokafka_consumer.topics)),
                "assignment": await thread.call_thread(aiokafka_consumer.assignment),
            }
        finally:
            await thread.stop()
        seen["bystander_cancelled"] = bystander.cancelled() or bystander.done()
        seen["stopped"] = thread._shutdown.is_set()
        bystander.cancel()
        return seen

    seen = asyncio.run(main())
    assert seen["threads_started"] == 0
    assert seen["thread_loop_is_app_loop"] is True
    assert seen["client_loop_is_app_loop"] is True
    assert isinstance(seen["topics"], set)
    assert seen["assignment"] == set()
    assert seen["bystander_cancelled"] is False
    assert seen["stopped"] is True
