"""Engine events handed from the engine thread to the handlers on the event loop: a burst of events (an engine
step's, for every request) costs one wake-up of the loop, not one per event."""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from pyggml.model.runtime.engine import Event


class Relay:
    """Carries (asyncio queue, item) pairs from any thread to the loop: the first put of a burst schedules one
    delivery, which empties everything put until it runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.pending, self.scheduled = loop, collections.deque(), False

    def put(self, queue: asyncio.Queue, item: object) -> None:
        """(engine thread) Queue item for the loop."""
        self.pending.append((queue, item))
        if not self.scheduled:
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
