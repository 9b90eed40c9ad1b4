"""Paged KV cache: per layer a pool of fixed-size blocks, a block table per sequence, ref-counted blocks shared
between sequences with a common prefix and copied on write; sliding-window layers give back blocks that leave
the window. Full blocks are indexed by a hash of the tokens up to their end and stay cached once no sequence holds
them, evicted least recently used only when blocks are needed (vLLM's automatic prefix caching), so a later
prompt with the same prefix takes them over. Attention reads it through graph inputs: physical rows to write, rows
to gather, a mask."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pyggml import ops
from pyggml.graph.dtypes import DType, nbytes
from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Flag, Tensor, new_tensor

from .kv_cache import BLOCK_SIZE, DEFAULT_KV_TYPE, check_kv_types

if TYPE_CHECKING:
    from .step import StepInputs


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of two token lists."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


class PoolFull(PyggmlError):
    """No free block is left in a pool."""


def block_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The hash of a full block: of its tokens and, through the parent block's key, of every token before them."""
    return hashlib.sha256(parent + np.asarray(tokens, np.int64).tobytes()).digest()


class BlockPool:
    """Block ids handed out and taken back, each with a reference count (shared prefix blocks count > 1); full
    blocks indexed by key stay cached at zero references, least recently used first out when blocks are needed.
    in_order (one sequence's pool): the lowest block that is free or cached is taken, so a sequence's rows are its
    positions and attention can read them in place."""

    def __init__(self, n_blocks: int, in_order: bool = False):
        self.refs = np.zeros(n_blocks, np.int64)
        self.free = list(range(n_blocks - 1, -1, -1))
        self.in_order = in_order
        self.index: dict[bytes, int] = {}  # key -> the full block that holds its tokens' K/V
        self.keys: dict[int, bytes] = {}   # indexed block -> its key
        self.cached: OrderedDict[int, None] = OrderedDict()  # indexed blocks no sequence holds, oldest first

    @property
    def n_used(self) -> int:
        """Blocks held by sequences (cached blocks not counted)."""
        return len(self.refs) - self.n_free

    @property
    def n_free(self) -> int:
        """Blocks that can be taken: free ones and cached ones (evicted when taken)."""
        return len(self.free) + len(self.cached)

    def take(self) -> int:
        """A free block, else the least recently used cached one (forgotten); in_order: the lowest of them. Now
        referenced once."""
        if not self.free and not self.cached:
            raise PoolFull(f"all {len(self.refs)} KV blocks are in use")
        if self.in_order:
            block = min(self.free + list(self.cached))
        else:
            block = self.free[-1] if self.free else next(iter(self.cached))
        if block in self.cached:
            del self.cached[block], self.index[self.keys.pop(block)]
        elif block == self.free[-1]:
            self.free.pop()
        else:
            self.free.remove(block)
        self.refs[block] = 1
        return block

    def share(self, block: int) -> None:
        """One reference more (a cached block is held again)."""
        self.cached.pop(block, None)
        self.refs[block] += 1

    def drop(self, block: int) -> None:
        """One reference fewer; at zero the block is cached if indexed, else free."""
        self.refs[block] -= 1
        if self.refs[block] == 0:
            if block in self.keys:
                self.cached[block] = None
            else:
                self.free.append(block)

    def forget(self) -> None:
        """Unindex every block (their K/V is gone): cached blocks become free, held ones stay held."""
        self.free.extend(self.cached)
        self.cached.clear()
        self.index.clear()
        self.keys.clear()

    def register(self, key: bytes, block: int) -> None:
        """Index a full block under key (a key already held by another block keeps that one)."""
        if key not in self.index and block not in self.keys:
            self.index[key], self.keys[block] = block, key


@dataclass
class SeqBlocks:
    """One sequence in the paged cache: its block table per cache kind (None: a block that left the window)."""
    tables: dict[int | None, list[int | None]]
    tokens: list[int] = field(default_factory=list)  # the tokens whose K/V the blocks hold, in order
    keys: list[bytes] = field(default_factory=list)  # block_key of each full block, in order

    @property
    def n_past(self) -> int:
        """Tokens held."""
        return len(self.tokens)


class PagedKVCache:
    """K and V of (blocks * block_size, n_kv_head * head_dim) per layer, handed out in blocks to sequences: n_blocks
    per layer, or window_blocks for sliding-window layers (one sequence's ring: see layer_rows); in_order: blocks
    handed out lowest first (one sequence's cache, read in place)."""

    def __init__(self, n_layer: int, n_blocks: int, n_kv_head: int, head_dim: int, dtype: DType = DEFAULT_KV_TYPE,
                 windows: list[int | None] | None = None, block_size: int = BLOCK_SIZE,
                 head_dim_v: int | None = None, dtype_v: DType | None = None, window_blocks: int | None = None,
                 in_order: bool = False):
        self.dtype, self.dtype_v = check_kv_types(dtype, dtype_v or dtype, head_dim, head_dim_v or head_dim)
        self.block_size, self.n_blocks = block_size, n_blocks
        windows = windows or [None] * n_layer
        self.pools = {w: BlockPool(n_blocks if w is None else min(n_blocks, window_blocks or n_blocks), in_order)
                      for w in dict.fromkeys(windows)}  # one per window (cache kind)
        self.k = [new_tensor((self.pool_rows(w), n_kv_head * head_dim), self.dtype, f"paged_k_l{il}",
                             Flag.PERSISTENT) for il, w in enumerate(windows)]
        self.v = [new_tensor((self.pool_rows(w), n_kv_head * (head_dim_v or head_dim)), self.dtype_v,
                             f"paged_v_l{il}", Flag.PERSISTENT) for il, w in enumerate(windows)]
        self.layer_window = windows

    def pool_rows(self, w: int | None) -> int:
        """Rows of each K and V tensor of kind w."""
        return len(self.pools[w].refs) * self.block_size

    @property
    def ring(self) -> bool:
        """Whether sliding-window layers hold fewer blocks than the others (a window's, not a context's)."""
        return any(self.pool_rows(w) < self.n_blocks * self.block_size for w in self.pools)

    def forget_prefixes(self) -> None:
        """Drop the prefix cache's index (the K/V it points to was lost, as when a pipeline stage restarts)."""
        for pool in self.pools.values():
            pool.forget()

    @property
    def n_used(self) -> int:
        """Blocks held by sequences, over all kinds."""
        return sum(pool.n_used for pool in self.pools.values())

    @property
    def nbytes(self) -> int:
        """Bytes of all the K and V pools."""
        return sum(t.nbytes for t in self.k + self.v)

    @property
    def nbytes_used(self) -> int:
        """Bytes of the K and V rows held by sequences."""
        return sum((t.nbytes + u.nbytes) // len(self.pools[w].refs) * self.pools[w].n_used
                   for t, u, w in zip(self.k, self.v, self.layer_window))

    def new_sequence(self) -> SeqBlocks:
        """An empty sequence."""
        return SeqBlocks({w: [] for w in self.pools})

    def shareable(self, source: SeqBlocks, tokens: list[int]) -> int:
        """How many leading tokens a new sequence of these tokens can take over from source (the last token is
        always left to evaluate; windowed kinds must still hold what the first new token sees)."""
        n = common_prefix(source.tokens, tokens[:-1])
        for w, table in source.tables.items():
            if w is not None and any(b is None for b in table[max(0, n - w) // self.block_size:self._n_blocks(n)]):
                return 0
        return n

    def share_prefix(self, seq: SeqBlocks, source: SeqBlocks, n: int) -> None:
        """Make an empty seq hold source's first n tokens by sharing their blocks (copied when written)."""
        for w, table in source.tables.items():
            seq.tables[w] = table[:self._n_blocks(n)]
            for block in seq.tables[w]:
                if block is not None:
                    self.pools[w].share(block)
        seq.tokens, seq.keys = source.tokens[:n], source.keys[:n // self.block_size]

    def prefix_keys(self, tokens: Sequence[int]) -> list[bytes]:
        """The keys of the full blocks of tokens but the last (the last token is always left to evaluate)."""
        keys, parent, bs = [], b"", self.block_size
        for j in range((len(tokens) - 1) // bs):
            parent = block_key(parent, tokens[j * bs:(j + 1) * bs])
            keys.append(parent)
        return keys

    def cached_blocks(self, keys: list[bytes]) -> int:
        """How many leading blocks of these keys every kind holds indexed (a windowed kind: those the next token
        still sees)."""
        for n in range(len(keys), 0, -1):
            if all(key in self.pools[w].index for w in self.pools
                   for key in keys[self._window_start(w, n * self.block_size) // self.block_size:n]):
                return n
        return 0

    def _window_start(self, w: int | None, n_tokens: int) -> int:
        """The first position the token at n_tokens sees in kind w."""
        return 0 if w is None else max(0, n_tokens - w + 1)

    def reuse_cached(self, seq: SeqBlocks, tokens: Sequence[int], keys: list[bytes], n: int) -> None:
        """Make an empty seq hold the first n full blocks of tokens, cached under these keys (prefix_keys; n from
        cached_blocks) by finished or running sequences."""
        for w, pool in self.pools.items():
            first = self._window_start(w, n * self.block_size) // self.block_size
            seq.tables[w] = [None] * first + [pool.index[key] for key in keys[first:n]]
            for block in seq.tables[w][first:]:
                pool.share(block)
        seq.tokens, seq.keys = list(tokens[:n * self.block_size]), keys[:n]

    def _n_blocks(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def blocks_needed(self, seq: SeqBlocks, n_new: int, w: int | None = None) -> int:
        """New blocks of kind w that appending n_new tokens takes, copies on write included."""
        table = seq.tables[w]
        first, end = seq.n_past // self.block_size, self._n_blocks(seq.n_past + n_new)
        return sum(1 for j in range(first, end) if j >= len(table) or self._shared(w, table[j]))

    def _shared(self, w: int | None, block: int | None) -> bool:
        return block is not None and self.pools[w].refs[block] > 1

    def reserve(self, seq: SeqBlocks, n_new: int) -> list[tuple[int | None, int, int]]:
        """Blocks for n_new more tokens; returns the copies on write to make first: (kind, from, to) blocks."""
        if any(self.blocks_needed(seq, n_new, w) > pool.n_free for w, pool in self.pools.items()):
            raise PoolFull(f"{n_new} more tokens need more KV blocks than are free")
        copies = []
        first, end = seq.n_past // self.block_size, self._n_blocks(seq.n_past + n_new)
        for w, table in seq.tables.items():
            pool = self.pools[w]
            for j in range(first, end):
                if j >= len(table):
                    table.append(pool.take())
                elif self._shared(w, table[j]):
                    old, table[j] = table[j], pool.take()
                    pool.drop(old)
                    copies.append((w, old, table[j]))
        return copies

    def commit(self, seq: SeqBlocks, tokens: list[int]) -> None:
        """Record tokens written after the step and index the blocks they fill; windowed kinds give back blocks no
        later token can see."""
        seq.tokens += tokens
        bs = self.block_size
        for j in range(len(seq.keys), seq.n_past // bs):
            seq.keys.append(block_key(seq.keys[-1] if seq.keys else b"", seq.tokens[j * bs:(j + 1) * bs]))
            for w, table in seq.tables.items():
                if table[j] is not None:
                    self.pools[w].register(seq.keys[j], table[j])
        for w, table in seq.tables.items():
            if w is None:
                continue
            for j in range(max(0, seq.n_past - w + 1) // self.block_size):
                if table[j] is not None:
                    self.pools[w].drop(table[j])
                    table[j] = None

    def release(self, seq: SeqBlocks) -> None:
        """Give back every block of a finished sequence."""
        for w, table in seq.tables.items():
            for block in table:
                if block is not None:
                    self.pools[w].drop(block)
            table.clear()
        seq.tokens, seq.keys = [], []

    def rows(self, seq: SeqBlocks, w: int | None, positions: np.ndarray) -> np.ndarray:
        """Physical rows of these positions in kind w."""
        table = np.asarray([-1 if b is None else b for b in seq.tables[w]], np.int64)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

    def gather(self, seq: SeqBlocks, w: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(physical rows, positions) of every row in seq's held blocks of kind w."""
        held = [(j, b) for j, b in enumerate(seq.tables[w]) if b is not None]
        offsets = np.arange(self.block_size)
        rows = np.concatenate([b * self.block_size + offsets for _, b in held] or [offsets[:0]])
        positions = np.concatenate([j * self.block_size + offsets for j, _ in held] or [offsets[:0]])
        return rows, positions

    def _written(self, k: Tensor, v: Tensor, inp: StepInputs, il: int, window: int | None) -> list[Tensor]:
        """Layer il's K and V stores (rows, Hkv * D) after this step's k, v rows (T, Hkv, D) are written at
        their physical rows."""
        return [ops.set_rows(store, ops.reshape(cur, (cur.shape[0], cur.shape[1] * cur.shape[2])), inp.kv_idx[window])
                for cur, store in ((k, self.k[il]), (v, self.v[il]))]

    def kv_stores(self, k: Tensor, v: Tensor, inp: StepInputs, il: int, window: int | None) -> tuple[Tensor, Tensor]:
        """Write this step's k, v rows; layer il's whole K and V stores as (rows, Hkv, D), for paged_attn."""
        stores = [ops.reshape(w, (w.shape[0], cur.shape[1], cur.shape[2]))
                  for w, cur in zip(self._written(k, v, inp, il, window), (k, v))]
        return stores[0], stores[1]

    def kv_views(self, k: Tensor, v: Tensor, inp: StepInputs, il: int, window: int | None) -> tuple[Tensor, Tensor]:
        """Write this step's k, v rows; the rows the step attends to as (Hkv, n_kv, D): gathered, or (without a
        gather input: one sequence holding the first rows in order) a view of the store's first n_kv rows (of a
        quantized store: rows of whole blocks per head)."""
        gather, n_kv = inp.kv_gather.get(window), inp.kq_mask[window].shape[-1]
        views = []
        for written, cur, name in zip(self._written(k, v, inp, il, window), (k, v), ("k_cache", "v_cache")):
            n_head, dim = cur.shape[1], cur.shape[2]
            if gather is None:
                strides = (nbytes((dim,), written.dtype), written.strides[0], written.strides[-1])
                view = ops.view(written, (n_head, n_kv, dim), strides)
            else:
                view = ops.permute(ops.reshape(ops.get_rows(written, gather), (n_kv, n_head, dim)), 1, 0, 2)
            views.append(view.set_name(f"{name}-{il}"))
        return views[0], views[1]

    def copy_graph(self, w: int | None, src: Tensor, dst: Tensor) -> list[Tensor]:
        """Graph outputs that copy K and V rows src to rows dst in every layer of kind w (one element each, so
        running it downloads nothing big)."""
        outs = []
        for il, lw in enumerate(self.layer_window):
            if lw == w:
                for store in (self.k[il], self.v[il]):
                    written = ops.set_rows(store, ops.get_rows(store, src), dst)
                    outs.append(ops.view(written, (1,)))
        return outs
