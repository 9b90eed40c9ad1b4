"""`pyggml serve`: an OpenAI-compatible HTTP server over the batching engine (needs the `server` extra)."""

MAX_BODY = 4 << 20  # bytes of a request body by default: far more than any context here holds, far less than memory
