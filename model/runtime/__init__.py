"""Running a model: contexts, KV caches, the engine (continuous batching), sampling and generation."""
