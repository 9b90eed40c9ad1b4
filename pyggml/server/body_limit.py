"""A limit on request bodies: a body over it (by its Content-Length, or as it arrives when chunked) is refused
with a 413 before it is read into memory, answered by the app's error handlers (an OpenAI error body)."""
from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: receiving more than max_body bytes of a request body raises HTTPException(413) in the
    route that reads it."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_body:
                raise self.too_large()
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise self.too_large()
            return message
        await self.app(scope, limited, send)

    def too_large(self) -> HTTPException:
        return HTTPException(413, f"the request body is larger than this server's limit of {self.max_body} bytes")
