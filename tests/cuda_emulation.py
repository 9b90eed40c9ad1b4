"""The CUDA kernels of backends/cupy/cuda_sources.py compiled for the CPU with g++ and run there: a RawModule for the
stand-in for cupy whose kernels compute, so that the raw-kernel path's arithmetic is checked without a GPU.

Each block runs as blockDim OS threads (one block after the other; kernels whose threads never exchange values
run them one after the other in one thread); a warp's shuffles exchange values through a
per-warp buffer between two barriers, __syncthreads is a block barrier, __shared__ is a static (one block runs at
a time). This checks what the kernels compute, not how fast or how they behave under a GPU's memory model.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import fake_cupy

PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#define PYGGML_CPU_EMULATION
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
struct Warp { float values[32]; std::barrier<>* bar; };
static thread_local Dim3 threadIdx, blockIdx;
static thread_local Warp* warp_of_thread;
static Dim3 blockDim, gridDim;
static std::barrier<>* block_barrier;
typedef unsigned short u16_t;
inline float h2f(u16_t h) { _Float16 f; std::memcpy(&f, &h, 2); return (float)f; }
inline u16_t f2h(float x) { _Float16 f = (_Float16)x; u16_t h; std::memcpy(&h, &f, 2); return h; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
    const unsigned lane = (threadIdx.y * blockDim.x + threadIdx.x) % 32;
    warp_of_thread->values[lane] = v;
    warp_of_thread->bar->arrive_and_wait();
    const float r = warp_of_thread->values[lane ^ o];
    warp_of_thread->bar->arrive_and_wait();
    return r;
}
static void launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, int alone,
                   const std::function<void()>& kernel) {
    blockDim = {bx, by, bz};
    gridDim = {gx, gy, gz};
    const unsigned n = bx * by * bz;
    for (unsigned b = 0; b < gx * gy * gz && alone; ++b)  // threads that never meet: run one after the other
        for (unsigned t = 0; t < n; ++t) {
            threadIdx = {t % bx, t / bx % by, t / (bx * by)};
            blockIdx = {b % gx, b / gx % gy, b / (gx * gy)};
            kernel();
        }
    if (alone) return;
    std::barrier<> block(n), next_block(n);  // __syncthreads; the end of a block (static shared memory is reused)
    block_barrier = &block;
    std::vector<std::unique_ptr<std::barrier<>>> bars;
    std::vector<Warp> warps((n + 31) / 32);
    for (unsigned w = 0; w < warps.size(); ++w) {
        bars.emplace_back(new std::barrier<>(std::min(32u, n - 32 * w)));
        warps[w].bar = bars.back().get();
    }
    std::vector<std::thread> threads;  // one OS thread per CUDA thread of a block, walking every block
    for (unsigned t = 0; t < n; ++t)
        threads.emplace_back([&, t] {
            threadIdx = {t % bx, t / bx % by, t / (bx * by)};
            warp_of_thread = &warps[t / 32];
            for (unsigned b = 0; b < gx * gy * gz; ++b) {
                blockIdx = {b % gx, b / gx % gy, b / (gx * gy)};
                kernel();
                next_block.arrive_and_wait();
            }
        });
    for (auto& th : threads) th.join();
}
"""
C_TYPES = {"int": ctypes.c_int32, "long long": ctypes.c_int64, "float": ctypes.c_float}
KERNEL = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')


def available() -> str | None:
    """None when a g++ that has C++20's <barrier> and _Float16 is here, else why not."""
    if not shutil.which("g++"):
        return "no g++ to compile the CUDA sources for the CPU"
    probe = "#include <barrier>\nint main() { std::barrier<> b(1); _Float16 h = 1; return (int)h - 1; }\n"
    done = subprocess.run(["g++", "-std=c++20", "-x", "c++", "-", "-o", "/dev/null", "-pthread"], input=probe,
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"g++ lacks C++20 <barrier> or _Float16: {done.stderr[:200]}"


MEETS = re.compile(r"warp_sum|warp_max|block_reduce|__syncthreads|__shfl")


def _launcher(name: str, params: list[str], body: str) -> str:
    """A C function running the kernel over a grid; its threads run one after the other if they never meet."""
    names = [p.replace("*", " ").split()[-1] for p in params]
    alone = int(not MEETS.search(body))
    return (f'extern "C" void run_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
            f'unsigned bz, {", ".join(params)}) {{ launch(gx, gy, gz, bx, by, bz, {alone}, [=] {{ '
            f'{name}({", ".join(names)}); }}); }}')


def _bodies(code: str) -> dict[str, str]:
    """Each kernel's text up to the next kernel."""
    starts = [(m.group(1), m.start()) for m in KERNEL.finditer(code)] + [("", len(code))]
    return {name: code[start:end] for (name, start), (_, end) in zip(starts, starts[1:])}


def build(code: str) -> tuple[ctypes.CDLL, dict[str, list[str]]]:
    """The source compiled for the CPU (cached by its hash) and each kernel's parameters."""
    signatures = {name: [p.strip() for p in params.split(",")] for name, params in KERNEL.findall(code)}
    bodies = _bodies(code)
    full = PRELUDE + code + "\n" + "\n".join(_launcher(n, p, bodies[n]) for n, p in signatures.items())
    folder = Path(tempfile.gettempdir()) / "pyggml-cuda-emulation"
    folder.mkdir(exist_ok=True)
    library = folder / f"{hashlib.sha256(full.encode()).hexdigest()[:16]}.so"
    if not library.exists():
        (folder / "kernels.cpp").write_text(full)
        subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", "-o", str(library),
                        str(folder / "kernels.cpp")], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library)), signatures


class EmulatedRawModule:
    """cupy.RawModule over the CPU build: get_function(name)(grid, block, args) runs the kernel on the arrays."""

    def __init__(self, code: str, options: tuple = ()):
        self.lib, self.signatures = build(code)
        self.launched: list[str] = []

    def get_function(self, name: str):
        fn = getattr(self.lib, f"run_{name}")
        params = self.signatures[name]
        fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p if "*" in p else C_TYPES[p.rsplit(" ", 1)[0]]
                                             for p in params]

        def launch(grid: tuple, block: tuple, args: tuple) -> None:
            dims = [*grid, 1, 1][:3] + [*block, 1, 1][:3]
            values = [_pointer(a) if "*" in p else a.item() for p, a in zip(params, args)]
            fn(*dims, *values)
            self.launched.append(name)
            fake_cupy.counts.launches += 1
            if fake_cupy.counts.recording is not None:  # captured: replayed with the graph
                fake_cupy.counts.recording.append((fn, (*dims, *values), {}, None))
        return launch


def _pointer(arg: Any) -> int | None:
    """The address of a stand-in array's first element (None for a null pointer)."""
    if isinstance(arg, np.generic):
        return None
    return arg._a.__array_interface__["data"][0]
