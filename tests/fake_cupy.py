"""A CPU stand-in for cupy: NumPy underneath, but arrays refuse implicit host conversion as cupy's do, only names
cupy exports exist, host arrays are refused as operands, and syncs and launches are counted.

Stream capture is emulated: between `begin_capture` and `end_capture` syncs, host transfers and cuBLAS calls raise
(as CUDA and cupy refuse them), every launch is recorded, and the returned graph's `launch` replays the recorded
calls on the same buffers (a CUDA graph's fixed pointers), so a replayed plan sees new input values.
"""
from __future__ import annotations

import contextlib
import operator
import re
import types
from typing import Any

import numpy as np

# cupy functions this stand-in offers (each exists in cupy with NumPy's signature for what pyggml passes)
FUNCTIONS = (
    "add subtract multiply divide true_divide negative exp tanh sqrt square maximum minimum clip cos sin log "
    "power where copyto concatenate take take_along_axis sum mean max argmax reshape broadcast_to swapaxes "
    "may_share_memory einsum matmul dot empty_like zeros_like ascontiguousarray bitwise_and bitwise_or "
    "right_shift left_shift invert logical_and isfinite"
).split()
BLAS = frozenset({"matmul", "dot", "einsum"})  # go through cuBLAS in cupy: refused during stream capture
VIEWS = frozenset({"reshape", "broadcast_to", "swapaxes", "may_share_memory", "view", "transpose", "ravel",
                   "__getitem__", "T"})
METHODS = frozenset({"reshape", "view", "astype", "swapaxes", "transpose", "ravel", "copy", "sum", "mean", "max",
                     "argmax", "fill"})
OPERATORS = ("add sub mul truediv floordiv mod pow and or xor lshift rshift lt le gt ge eq ne neg invert "
             "radd rsub rmul rtruediv rfloordiv rpow rand ror rlshift rrshift "
             "iadd isub imul itruediv ifloordiv iand ior ilshift irshift").split()


class CaptureError(RuntimeError):
    """What CUDA reports for an operation not allowed while a stream is being captured."""


class Counters:
    """Syncs, launches and host<->device transfers since the last reset; the capture being recorded."""

    def __init__(self) -> None:
        self.reset()
        self.recording: list | None = None

    def reset(self) -> None:
        self.syncs = self.launches = self.uploads = 0


counts = Counters()


def _sync(what: str) -> None:
    if counts.recording is not None:
        raise CaptureError(f"{what}: synchronization during stream capture")
    counts.syncs += 1


def _unwrap(x: Any) -> Any:
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}: a host array cannot be an operand of a device function")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(result: Any, originals: dict[int, ndarray]) -> Any:
    if isinstance(result, np.ndarray):
        original = originals.get(id(result))
        return ndarray._of(result) if original is None else original
    if isinstance(result, tuple):
        return tuple(_wrap(r, originals) for r in result)
    return result


def _call(name: str, fn: Any, args: tuple, kwargs: dict) -> Any:
    """Run a NumPy function on unwrapped arrays, count the launch, record it while capturing."""
    if counts.recording is not None and name in BLAS:
        raise CaptureError(f"cuBLAS ({name}) during stream capture")
    originals = {id(a._a): a for a in (*args, *kwargs.values()) if isinstance(a, ndarray)}
    raw_args, raw_kwargs = _unwrap(args), _unwrap(kwargs)
    result = fn(*raw_args, **raw_kwargs)
    if not _is_view(name, result, originals):
        counts.launches += 1
        if counts.recording is not None:
            counts.recording.append((fn, raw_args, raw_kwargs, result))
    return _wrap(result, originals)


def _is_view(name: str, result: Any, originals: dict[int, ndarray]) -> bool:
    """A view costs no launch (a reshape that had to copy did launch one)."""
    if name not in VIEWS:
        return False
    return not isinstance(result, np.ndarray) or any(np.may_share_memory(result, a._a) for a in originals.values())


class MemoryPointer:
    """cupy's MemoryPointer: a buffer and a byte offset into it."""

    def __init__(self, root: np.ndarray, offset: int):
        self.root, self.offset = root, offset

    def __add__(self, n: int) -> MemoryPointer:
        return MemoryPointer(self.root, self.offset + int(n))


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class ndarray:  # noqa: N801  (cupy's name)
    """A device array: NumPy values that the host can read only through get()/asnumpy (counted as syncs)."""

    __slots__ = ("_a",)

    def __init__(self, shape, dtype=float, memptr: MemoryPointer | None = None, strides=None):
        if memptr is None:
            self._a = np.empty(shape, dtype)
        else:
            root = memptr.root.reshape(-1).view(np.uint8)
            self._a = np.ndarray(shape, dtype, buffer=root, offset=memptr.offset, strides=strides)

    @classmethod
    def _of(cls, a: np.ndarray) -> ndarray:
        obj = cls.__new__(cls)
        obj._a = a
        return obj

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    strides = property(lambda self: self._a.strides)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _call("T", lambda a: a.T, (self,), {}))

    @property
    def data(self) -> MemoryPointer:
        root = _root(self._a)
        return MemoryPointer(root, self._a.__array_interface__["data"][0] - root.__array_interface__["data"][0])

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` instead.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or not hasattr(_module, ufunc.__name__):
            return NotImplemented
        if "out" in kwargs and isinstance(kwargs["out"], tuple) and len(kwargs["out"]) == 1:
            kwargs["out"] = kwargs["out"][0]
        return _call(ufunc.__name__, ufunc, inputs, kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        if func in (np.asarray, np.array):  # like=a device array: made on the host, uploaded
            return asarray(args[0], kwargs.get("dtype"))
        if not hasattr(_module, func.__name__):
            return NotImplemented
        return _call(func.__name__, func, args, kwargs)

    def __getattr__(self, name: str):
        if name not in METHODS:
            raise AttributeError(name)
        return lambda *args, **kwargs: _call(name if name in VIEWS else "method",
                                             lambda a, *r, **k: getattr(a, name)(*r, **k), (self, *args), kwargs)

    def __getitem__(self, key):
        if not _basic(key):
            return _call("take", operator.getitem, (self, key), {})
        keys = key if isinstance(key, tuple) else (key,)  # an Ellipsis: a 0-d view, never a host scalar (as cupy)
        return _call("__getitem__", operator.getitem, (self, keys if Ellipsis in keys else (*keys, Ellipsis)), {})

    def __setitem__(self, key, value) -> None:
        _call("setitem", operator.setitem, (self, key, value), {})

    def __len__(self) -> int:
        return len(self._a)

    def get(self) -> np.ndarray:
        _sync("get")
        return self._a.copy()

    def set(self, host: np.ndarray) -> None:
        _upload(self._a, host)

    def item(self):
        _sync("item")
        return self._a.item()

    __int__ = lambda self: int(self.item())  # noqa: E731
    __float__ = lambda self: float(self.item())  # noqa: E731
    __bool__ = lambda self: bool(self.item())  # noqa: E731

    def __repr__(self) -> str:
        return f"fake_cupy.ndarray({list(self.shape)}, {self.dtype})"


def _basic(key: Any) -> bool:
    """Whether an index is basic (a view, no launch)."""
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, slice, np.integer)) for k in keys)


def _operator(name: str):
    op = getattr(operator, f"__{name.removeprefix('r')}__" if name.startswith("r") and name not in ("rshift",)
                 else f"__{name}__")
    if name.startswith("r") and name not in ("rshift",):
        return lambda self, other: _call(name, lambda a, b: op(b, a), (self, other), {})
    return lambda self, *other: _call(name, op, (self, *other), {})


for _name in OPERATORS:
    setattr(ndarray, f"__{_name}__", _operator(_name))


def _upload(dst: np.ndarray, host: Any) -> None:
    if counts.recording is not None:
        raise CaptureError("a copy from pageable host memory during stream capture")
    counts.uploads += 1
    np.copyto(dst, np.asarray(host).reshape(dst.shape), casting="unsafe")


def asarray(a: Any, dtype=None) -> ndarray:
    """A device array of a (host values are uploaded: counted)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    host = np.asarray(a, dtype)
    out = ndarray(host.shape, host.dtype)
    _upload(out._a, host)
    return out


def asnumpy(a: ndarray) -> np.ndarray:
    """A host copy (a sync)."""
    return a.get()


def _factory(fn):
    return lambda *args, **kwargs: ndarray._of(fn(*args, **kwargs))


empty, zeros, ones = _factory(np.empty), _factory(np.zeros), _factory(np.ones)
float16, float32, float64, int32, int64, uint8, uint16, uint32, intp = (
    np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.intp)


def arange(*args, **kwargs) -> ndarray:
    counts.launches += 1
    return ndarray._of(np.arange(*args, **kwargs))


class Graph:
    """A captured CUDA graph: the recorded launches, replayed on the same buffers."""

    def __init__(self, calls: list):
        self.calls = calls

    def launch(self, stream: Stream | None = None) -> None:
        counts.launches += 1
        for fn, args, kwargs, result in self.calls:
            value = fn(*args, **kwargs)
            if isinstance(result, np.ndarray) and value is not result:
                np.copyto(result, value)


class Stream:
    """A stream; only non-blocking streams may be captured (cupy refuses the legacy default stream)."""

    current: Stream | None = None

    def __init__(self, non_blocking: bool = False, null: bool = False):
        self.non_blocking = non_blocking

    def use(self) -> Stream:
        Stream.current = self
        return self

    def synchronize(self) -> None:
        _sync("stream.synchronize")

    def begin_capture(self, mode=None) -> None:
        if not self.non_blocking:
            raise CaptureError("the legacy default stream cannot be captured")
        counts.recording = []

    def end_capture(self) -> Graph:
        calls, counts.recording = counts.recording, None
        return Graph(calls)

    def is_capturing(self) -> bool:
        return counts.recording is not None


class Device:
    def __init__(self, index: int = 0):
        self.id = index

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        _sync("device.synchronize")


class MemoryPool:
    """A memory pool (allocation is NumPy's here)."""

    def malloc(self, nbytes: int):
        raise NotImplementedError


@contextlib.contextmanager
def using_allocator(allocator=None):
    yield


def _runtime() -> types.SimpleNamespace:
    return types.SimpleNamespace(getDeviceCount=lambda: 1, CUDARuntimeError=RuntimeError,
                                 deviceSynchronize=lambda: _sync("deviceSynchronize"))


def get_current_stream() -> Stream:
    return Stream.current or Stream()


cuda = types.SimpleNamespace(Stream=Stream, Device=Device, MemoryPool=MemoryPool, using_allocator=using_allocator,
                             runtime=_runtime(), get_current_stream=get_current_stream, Graph=Graph)
_module = types.ModuleType("fake_cupy")
for _fn_name in FUNCTIONS:
    _np_fn = getattr(np, _fn_name)
    globals()[_fn_name] = (lambda n, f: lambda *a, **k: _call(n, f, a, k))(_fn_name, _np_fn)
    setattr(_module, _fn_name, True)


class CheckedRawModule:
    """A RawModule whose kernels check each launch against the kernel's C signature (count, scalar types, float
    pointers given float32 arrays, at most 1024 threads a block) and count it, computing nothing: the raw-kernel
    path's launches are checked on the CPU, their arithmetic only on a GPU."""

    SCALARS = {"int": np.int32, "long long": np.int64, "float": np.float32}

    def __init__(self, code: str, options: tuple = ()):
        found = re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', code)
        self.signatures = {name: [p.strip() for p in params.split(",")] for name, params in found}
        self.launched: list[str] = []

    def get_function(self, name: str):
        params = self.signatures[name]

        def launch(grid: tuple, block: tuple, args: tuple) -> None:
            assert len(args) == len(params), f"{name}: {len(args)} arguments for {len(params)} parameters"
            assert int(np.prod(block)) <= 1024 and all(int(g) >= 1 for g in grid), f"{name}: {grid} {block}"
            for param, arg in zip(params, args):
                _check_argument(name, param, arg)
            counts.launches += 1
            self.launched.append(name)
        return launch


def _check_argument(kernel: str, param: str, arg: Any) -> None:
    if "*" in param:
        assert isinstance(arg, ndarray) or (isinstance(arg, np.uint64) and arg == 0), f"{kernel}: {param} <- {arg!r}"
        if param.startswith("const float*") or param.startswith("float*"):
            assert not isinstance(arg, ndarray) or arg.dtype == np.float32, f"{kernel}: {param} <- {arg!r}"
        return
    kind = param.rsplit(" ", 1)[0]
    assert isinstance(arg, CheckedRawModule.SCALARS[kind]), f"{kernel}: {param} <- {arg!r} ({type(arg)})"
