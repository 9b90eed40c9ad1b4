"""pyggml: a lazy computation-graph runtime modelled on ggml, with GGUF LLM inference."""
