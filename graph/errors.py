"""The error types every layer raises: one base so that callers (the CLI) catch them all."""


class PyggmlError(Exception):
    """Base of every error pyggml raises on bad input."""


class ShapeError(PyggmlError, ValueError):
    """An op was called with shapes or dtypes it does not accept."""
