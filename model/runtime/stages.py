"""Pipeline stages: the decoder's layers cut into contiguous ranges, each run by a stage that holds its range's
weights and, per context, its own paged K/V. Stages run in this process (the reference) or as Ray actors
(ray_stages.py); a step's inputs go to every stage and only its hidden-state rows go from stage to stage."""
from __future__ import annotations

import itertools
import os
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyggml.backends import BackendSpec
from pyggml.graph.dtypes import DType, as_dtype
from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Tensor, input_tensor

from .batch import BatchContext, CacheLost, Entry, GraphBuilder, StepArrays
from ..decoder import build_layers
from ..gguf_file import GGUFFile, TensorInfo
from ..hparams import HParams
from .step import StepInputs
from .paged_cache import PagedKVCache
from ..weights import Weights

BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.")
HEAD_TENSORS = ("output_norm.weight", "output.weight")  # beside token_embd.weight when the head is tied


def tensor_layer(name: str) -> int | None:
    """The layer a GGUF tensor belongs to (blk.N.*), or None for a model-wide one."""
    match = BLOCK_TENSOR.match(name)
    return int(match.group(1)) if match else None


def step_bytes(tensors: Mapping[str, TensorInfo], n_layer: int) -> list[int]:
    """Bytes each layer reads in a decode step, the output head counted with the last layer (the embedding
    lookup reads one row)."""
    costs = [0] * n_layer
    for name, info in tensors.items():
        il = tensor_layer(name)
        if il is not None:
            costs[il] += info.nbytes
    head = [n for n in HEAD_TENSORS if n in tensors] + ([] if "output.weight" in tensors else ["token_embd.weight"])
    costs[-1] += sum(tensors[n].nbytes for n in head if n in tensors)
    return costs


def balance(costs: Sequence[int], n_stages: int) -> list[range]:
    """Contiguous layer ranges, one per stage, whose summed costs are as even as a cut between layers allows
    (each cut where the running total comes nearest to k/n of the whole)."""
    if not 1 <= n_stages <= len(costs):
        raise PyggmlError(f"stages must be between 1 and the model's {len(costs)} layers, not {n_stages}")
    running, total, cuts = list(itertools.accumulate(costs)), sum(costs), [0]
    for k in range(1, n_stages):
        lo, hi = cuts[-1] + 1, len(costs) - (n_stages - k)  # at least one layer per stage on either side
        cuts.append(min(range(lo, hi + 1), key=lambda c: abs(running[c - 1] - total * k / n_stages)))
    cuts.append(len(costs))
    return [range(a, b) for a, b in zip(cuts, cuts[1:])]


def stage_tensor_names(names: Sequence[str], layers: range, n_layer: int) -> list[str]:
    """The tensors a stage of these layers reads: its blocks', the embedding on the first stage, the head on
    the last, and model-wide ones every layer reads (rope_freqs)."""
    first, last = layers.start == 0, layers.stop == n_layer
    def wanted(name: str) -> bool:
        il = tensor_layer(name)
        if il is not None:
            return il in layers
        if name == "token_embd.weight":
            return first or (last and "output.weight" not in names)
        return last if name in HEAD_TENSORS else True
    return [n for n in names if wanted(n)]


class StageFailed(CacheLost):
    """A pipeline stage died during a step (and was started again)."""


@dataclass
class ShippedTensors:
    """A stage's tensors received through Ray's object store, read as a GGUFFile is (for Weights)."""
    path: Path
    tensors: dict[str, TensorInfo]
    data: dict[str, np.ndarray]

    def tensor_data(self, name: str) -> np.ndarray:
        return self.data[name]


def ship(gguf: GGUFFile, names: Sequence[str]) -> ShippedTensors:
    """Those tensors of a file as host arrays, to send to a stage whose node does not see the file."""
    return ShippedTensors(gguf.path, {n: gguf.tensors[n] for n in names}, {n: gguf.tensor_data(n) for n in names})


def sees_file(path: str | Path, size: int) -> bool:
    """Whether this node has the file at that path with that size."""
    return os.path.isfile(path) and os.path.getsize(path) == size


class StageCache:
    """A stage's own paged K/V (its layers only), addressed by the model's layer numbers."""

    def __init__(self, cache: PagedKVCache, start: int):
        self.paged, self.start, self.block_size = cache, start, cache.block_size

    def kv_stores(self, k: Tensor, v: Tensor, inp: StepInputs, il: int, window: int | None) -> tuple[Tensor, Tensor]:
        return self.paged.kv_stores(k, v, inp, il - self.start, window)

    def kv_views(self, k: Tensor, v: Tensor, inp: StepInputs, il: int, window: int | None) -> tuple[Tensor, Tensor]:
        return self.paged.kv_views(k, v, inp, il - self.start, window)

    def copy_graph(self, w: int | None, src: Tensor, dst: Tensor) -> list[Tensor]:
        return self.paged.copy_graph(w, src, dst)


def stage_builder(layers: range) -> GraphBuilder:
    """The graph of a stage's layers; a stage after the first reads the previous one's rows as inp.hidden."""
    def build(w: Weights, hp: HParams, inp: StepInputs, cache) -> Tensor:
        if layers.start > 0:
            inp.hidden = input_tensor((inp.tokens.shape[0], hp.n_embd), DType.F32, "inp_hidden")
        return build_layers(w, hp, inp, cache, layers)
    return build


def layer_windows(hp: HParams) -> list[int | None]:
    """Each layer's attention window (None: full), which picks its cache kind."""
    return [hp.sliding_window if hp.is_swa(il) else None for il in range(hp.n_layer)]


@dataclass
class CacheSpec:
    """How a context's paged K/V is laid out: the same blocks in every stage."""
    n_blocks: int
    block_size: int
    type_k: str  # the K and V element types, by name (f16, q8_0, ...)
    type_v: str


class StageWorker:
    """One stage: a layer range's weights and, per context key, a BatchContext over its own paged K/V."""

    def __init__(self, hp: HParams, layers: range, backend: BackendSpec, tensors: GGUFFile | ShippedTensors):
        self.hp, self.layers, self.backend = hp, layers, backend
        self.weights = Weights(tensors)
        self.contexts: dict[int, BatchContext] = {}

    def open(self, key: int, spec: CacheSpec) -> None:
        """Make the K/V of context `key` for this stage's layers."""
        hp, windows = self.hp, layer_windows(self.hp)[self.layers.start:self.layers.stop]
        cache = PagedKVCache(len(self.layers), spec.n_blocks, hp.n_head_kv, hp.head_dim, as_dtype(spec.type_k),
                             windows, spec.block_size, hp.head_dim_v, as_dtype(spec.type_v))
        self.contexts[key] = BatchContext(self.weights, hp, stage_builder(self.layers),
                                          StageCache(cache, self.layers.start), self.backend)

    def execute(self, key: int, step: StepArrays, hidden: np.ndarray | None = None) -> np.ndarray:
        """This stage's part of a step: hidden-state rows out (logits on the last stage)."""
        return self.contexts[key].execute(step, hidden)

    def close(self, key: int) -> None:
        self.contexts.pop(key, None)


class Pipeline:
    """A model's stages in layer order and the contexts (keys) whose K/V every stage holds."""
    where = "in this process"

    def __init__(self, ranges: list[range]):
        self.ranges, self.workers = ranges, []
        self.specs: dict[int, CacheSpec] = {}
        self.epoch = 0  # stage rebuilds so far: a context whose sequences are older lost their K/V
        self._keys = itertools.count()

    def open(self, spec: CacheSpec) -> int:
        """A new context's K/V in every stage; its key."""
        key = next(self._keys)
        self.specs[key] = spec
        self._open(key, spec)
        return key

    def close(self, key: int) -> None:
        """Free a context's K/V in every stage."""
        if self.specs.pop(key, None) is not None:
            self._close(key)

    def name(self, i: int) -> str:
        """Stage i as messages name it, e.g. '1 (layers 18-29)'."""
        return f"{i} (layers {self.ranges[i].start}-{self.ranges[i].stop - 1})"

    def describe(self) -> str:
        """The stages' layer ranges, e.g. 'layers 0-17 | 18-29'."""
        return "layers " + " | ".join(f"{r.start}-{r.stop - 1}" for r in self.ranges)

    def _open(self, key: int, spec: CacheSpec) -> None:
        raise NotImplementedError

    def _close(self, key: int) -> None:
        raise NotImplementedError

    def run(self, key: int, step: StepArrays) -> np.ndarray:
        """The step through every stage in order: the logits of its wanted rows."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Let the stages go."""
        self.workers = []


class LocalPipeline(Pipeline):
    """Stages in this process, run one after the other (the reference for stages on Ray)."""

    def __init__(self, gguf: GGUFFile, hp: HParams, ranges: list[range], backend: BackendSpec):
        super().__init__(ranges)
        self.workers = [StageWorker(hp, r, backend, gguf) for r in ranges]

    def _open(self, key: int, spec: CacheSpec) -> None:
        for worker in self.workers:
            worker.open(key, spec)

    def _close(self, key: int) -> None:
        for worker in self.workers:
            worker.close(key)

    def run(self, key: int, step: StepArrays) -> np.ndarray:
        hidden = None
        for worker in self.workers:
            hidden = worker.execute(key, step, hidden)
        return hidden


class PipelineContext(BatchContext):
    """A BatchContext whose steps run through pipeline stages: the stages hold the K/V, its cache here keeps
    only the block tables (its tensors are never placed), so batched decode and the engine work unchanged."""

    def __init__(self, pipeline: Pipeline, hp: HParams, cache: PagedKVCache):
        super().__init__(None, hp, None, cache, None)
        self.pipeline = pipeline
        self.key = pipeline.open(CacheSpec(cache.n_blocks, cache.block_size, cache.dtype.name.lower(),
                                           cache.dtype_v.name.lower()))
        self.epoch = pipeline.epoch
        weakref.finalize(self, pipeline.close, self.key)

    def prepare(self, entries: Sequence[Entry]) -> tuple[StepArrays, dict[int, int]]:
        """As BatchContext's, but first CacheLost when a stage was rebuilt since this context's sequences
        were written."""
        if any(e.all_logits for e in entries):
            raise PyggmlError("all_logits is not available when the model runs as pipeline stages")
        if self._rebuilt() and self.cache.n_used:
            raise CacheLost("a pipeline stage was rebuilt since these sequences were evaluated; their K/V is gone")
        return super().prepare(entries)

    def uncached(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        raise PyggmlError("kv_cache=False is not available when the model runs as pipeline stages")

    def execute(self, step: StepArrays, hidden: np.ndarray | None = None, profile: bool = False) -> np.ndarray:
        try:
            return self.pipeline.run(self.key, step)
        finally:
            self._rebuilt()  # a failure this step met is reported by the step itself

    def _rebuilt(self) -> bool:
        """Whether a stage was rebuilt since the last look; if so the prefix cache's blocks are forgotten (the new
        stage holds none of their K/V)."""
        if self.epoch == self.pipeline.epoch:
            return False
        self.epoch = self.pipeline.epoch
        self.cache.forget_prefixes()
        return True
