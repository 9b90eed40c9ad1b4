"""Every CUDA kernel source compiles with NVRTC for sm_80 and sm_90, without a GPU: NVRTC is loaded with ctypes
from the nvidia-cuda-nvrtc-cu12 wheel (the `test` extra), so a typo fails CI instead of waiting for a device."""
from __future__ import annotations

import ctypes
import glob
import os

import pytest

from pyggml.backends.cupy import cuda_sources

ARCHS = ("compute_80", "compute_90")


def load_nvrtc() -> ctypes.CDLL:
    """libnvrtc from the nvidia-cuda-nvrtc wheel (or the system); skips only if none can be loaded."""
    try:
        import nvidia.cuda_nvrtc
        found = glob.glob(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib", "libnvrtc.so*"))
    except ImportError:
        found = []
    for path in [*found, "libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"]:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    pytest.skip("libnvrtc cannot be loaded (pip install nvidia-cuda-nvrtc-cu12)")


def compile_ptx(nvrtc: ctypes.CDLL, source: str, arch: str) -> tuple[int, str, int]:
    """(nvrtcResult of the compile, the program log, PTX size)."""
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"pyggml.cu", 0, None, None) == 0
    options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    result = nvrtc.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    ptx_size = ctypes.c_size_t(0)
    if result == 0:
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(ptx_size))
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return result, log.value.decode(errors="replace"), ptx_size.value


@pytest.fixture(scope="module")
def nvrtc() -> ctypes.CDLL:
    return load_nvrtc()


@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_compile(nvrtc, arch):
    result, log, ptx_size = compile_ptx(nvrtc, cuda_sources.source(), arch)
    assert result == 0, log
    assert ptx_size > 0 and "warning" not in log.lower(), log


def test_a_compile_error_fails(nvrtc):
    result, log, _ = compile_ptx(nvrtc, cuda_sources.source() + "\nextern \"C\" __global__ void bad() { x; }",
                                 ARCHS[0])
    assert result != 0 and "identifier" in log


def test_every_kernel_is_defined_once(nvrtc):
    """The kernels cupy_raw.py looks up exist in the source, under one name each."""
    from pyggml.backends.cupy.raw import KERNEL_NAMES
    text = cuda_sources.source()
    for name in KERNEL_NAMES:
        assert text.count(f" void {name}(") == 1, name
