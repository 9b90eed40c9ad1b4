"""Engine events handed from the engine thread to the handlers on the event loop: an engine step's events, for
every request, cost one wake-up of the loop, not one per event (each wake-up writes to the loop's self-pipe,
which lets the loop take the GIL from the engine mid-step)."""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from pyggml.model.runtime.engine import Event


class Relay:
    """Carries (asyncio queue, item) pairs from the engine thread to the loop: items put during a step wait for
    the step's end, when `flush` schedules one delivery, which empties everything put until it runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.pending, self.scheduled = loop, collections.deque(), False

    def put(self, queue: asyncio.Queue, item: object) -> None:
        """(engine thread) Queue item for the loop."""
        self.pending.append((queue, item))

    def flush(self) -> None:
        """(engine thread, after a step) Have the loop deliver what is pending."""
        if self.pending and not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self.deliver)
            except RuntimeError:  # the loop is gone (the server stopped): nobody listens
                pass

    def deliver(self) -> None:
        """(loop) Hand every pending item to its queue (scheduled is cleared first, so none is left behind)."""
        self.scheduled = False
        while self.pending:
            queue, item = self.pending.popleft()
            queue.put_nowait(item)


class AsyncSink:
    """The engine events of a request's choices, as (choice index, event) in an asyncio queue."""

    def __init__(self, relay: Relay) -> None:
        self.relay, self.queue = relay, asyncio.Queue()

    def put(self, item: tuple[int, Event]) -> None:
        self.relay.put(self.queue, item)

    def drain(self) -> list[tuple[int, Event]]:
        """Whatever else has arrived already, without waiting."""
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items


@dataclass
class ChoiceSink:
    """Where the engine puts one choice's events."""
    sink: AsyncSink
    index: int

    def put(self, event: Event) -> None:
        self.sink.put((self.index, event))
