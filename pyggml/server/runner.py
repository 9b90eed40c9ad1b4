"""Running the app under uvicorn with a graceful shutdown: on SIGTERM or SIGINT the server stops listening, the
engine admits nothing more and cancels what waits (a 503, or an error event in a stream), gives what runs
shutdown_timeout seconds, then cancels it too (its stream ends with an error event and [DONE]); a second
signal exits at once."""
from __future__ import annotations

from types import FrameType

import uvicorn
from fastapi import FastAPI

from pyggml.model.runtime.engine import Engine

CLOSE_MARGIN = 5.0  # seconds uvicorn waits for connections after the grace period, for the last events to go


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining the engine when told to exit."""

    def __init__(self, config: uvicorn.Config, engine: Engine, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.engine, self.shutdown_timeout = engine, shutdown_timeout

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self.engine.drain(self.shutdown_timeout)
        super().handle_exit(sig, frame)


def serve(app: FastAPI, engine: Engine, host: str, port: int, shutdown_timeout: float) -> None:
    """Serve until a signal, then shut down gracefully."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=shutdown_timeout + CLOSE_MARGIN)
    DrainingServer(config, engine, shutdown_timeout).run()
