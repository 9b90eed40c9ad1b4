"""The numba backends: numba (block kernels, float32 products) and numba-q8 (llama.cpp's 8-bit
activations, integer block products)."""
