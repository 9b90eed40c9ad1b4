"""A test fixture, not a registered backend: a CPU backend that behaves like a device, for tests without one: its arrays refuse implicit host reads and
every transfer is counted; kernels are the NumPy kernels run on the unwrapped arrays."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pyggml.graph.tensor import Tensor

from pyggml.backends.base import Step
from pyggml.backends.numpy.backend import NumpyBackend


class DeviceArray:
    """Device memory: shape and dtype can be read, values only through the backend's download."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray):
        self.data = data

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    nbytes = property(lambda self: self.data.nbytes)

    def __array__(self, *args, **kwargs):
        raise TypeError("a device array cannot be read on the host; download it through its backend")

    def __repr__(self) -> str:
        return f"DeviceArray({list(self.shape)}, {self.dtype})"


def host(x: DeviceArray) -> np.ndarray:
    """The array behind a device array (what the 'device' itself sees)."""
    return x.data


class TestDevice(NumpyBackend):
    """A fake device: counts uploads and downloads (bytes), and can be told which ops it does not support."""

    __test__ = False  # not a pytest class
    name = "testdevice"

    def __init__(self, unsupported: Iterable[str] = (), name: str = "testdevice", **options):
        super().__init__(**options)
        self.name, self.unsupported = name, frozenset(unsupported)
        self.reset_counts()

    def reset_counts(self) -> None:
        """Forget the transfers counted so far."""
        self.uploads: list[int] = []
        self.downloads: list[int] = []

    @property
    def upload_bytes(self) -> int:
        return sum(self.uploads)

    @property
    def download_bytes(self) -> int:
        return sum(self.downloads)

    def supports(self, node: Tensor) -> bool:
        return node.op not in self.unsupported and super().supports(node)

    def make_placed(self, leaf: Tensor, dense: bool) -> DeviceArray:
        array = super().make_placed(leaf, dense)  # placed once (the base caches it): one upload
        self.uploads.append(array.nbytes)
        return DeviceArray(array)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> DeviceArray:
        return DeviceArray(np.empty(shape, dtype))

    def arena_view(self, arena: DeviceArray, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> DeviceArray:
        return DeviceArray(super().arena_view(arena.data, offset, shape, dtype))

    def strided_view(self, base: DeviceArray, offset: int, shape: tuple[int, ...],
                     strides: tuple[int, ...]) -> DeviceArray:
        return DeviceArray(super().strided_view(base.data, offset, shape, strides))

    def upload(self, dst: DeviceArray, host_values: np.ndarray) -> None:
        host_values = np.asarray(host_values)
        self.uploads.append(host_values.nbytes)
        super().upload(dst.data, host_values)

    def download(self, src: DeviceArray) -> np.ndarray:
        self.downloads.append(src.nbytes)
        return super().download(src.data)

    def compile_node(self, node: Tensor, out: DeviceArray, srcs: list[Any]) -> Step:
        return super().compile_node(node, out.data, [s.data for s in srcs])
