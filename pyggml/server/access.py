"""Who may use the app: a Bearer API key on every route but /health (OpenAI's 401 body otherwise), and the
origins a browser may call it from (none unless named)."""
from __future__ import annotations

import ipaddress
import secrets

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .protocol import APIError

LOCAL_NAMES = {"localhost", "localhost.localdomain"}


def key_check(api_key: str | None):
    """A FastAPI dependency refusing a request without `Authorization: Bearer api_key` (none: all pass)."""
    bearer = HTTPBearer(auto_error=False)

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        if credentials is None:
            raise APIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        if not secrets.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")
    return check


def allow_origins(app: FastAPI, origins: list[str]) -> None:
    """Let browsers on these origins call the app (CORS); with none, no CORS header is ever sent."""
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine only."""
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
