"""The CuPy backend (NVIDIA GPU): raw GGUF blocks on the device, CUDA kernels, CUDA-graph replay."""
