"""Backend registry: the built-ins plus whatever installed packages declare in the `pyggml.backends` group."""
from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from pyggml.graph.errors import PyggmlError

from .base import Backend

ENTRY_POINT_GROUP = "pyggml.backends"
# name -> "module:factory"; imported only when asked for, so optional backends cost nothing to list
BUILTIN: dict[str, str] = {
    "numba": "pyggml.backends.numba.backend:NumbaBackend",
    "numba-q8": "pyggml.backends.numba.backend:NumbaQ8Backend",
    "numpy": "pyggml.backends.numpy.backend:NumpyBackend",
    "cupy": "pyggml.backends.cupy.backend:CupyBackend",
}


def _load(target: str) -> Callable[..., Backend]:
    module_name, _, attr = target.partition(":")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def available() -> dict[str, str]:
    """Every known backend name -> where its factory lives (built-ins, then entry points)."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def create(name: str, **options) -> Backend:
    """A new backend instance by name; an unknown name or a failing import raises PyggmlError."""
    targets = available()
    if name not in targets:
        raise PyggmlError(f"unknown backend {name!r}; available: {', '.join(targets)}")
    try:
        factory = _load(targets[name])
    except ImportError as e:
        raise PyggmlError(f"backend {name!r} cannot be loaded: {e}") from None
    return factory(**options)


def probe() -> dict[str, str | None]:
    """Every known backend name -> None if it can be created here, else the reason it cannot."""
    reasons: dict[str, str | None] = {}
    for name in available():
        try:
            create(name)
            reasons[name] = None
        except PyggmlError as e:
            reasons[name] = str(e)
    return reasons
