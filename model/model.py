"""Model: a GGUF LLM loaded for inference: tokenize, evaluate, generate, chat."""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pyggml.backends import BackendSpec, default_backend
from pyggml.graph.dtypes import DType, as_dtype
from pyggml.graph.errors import PyggmlError

from .chat_template import render_chat_segments, template_source
from .batch import BatchContext
from .context import Context
from .decoder import build_decoder, build_hidden
from .embedding import model_pooling, normalize as normalize_rows, pool
from .engine import Engine
from .generation import TextStream
from .gguf_file import GGUFFile
from .hparams import HParams, load_hparams
from .kv_cache import DEFAULT_KV_TYPE, KVCache
from .paged_cache import BLOCK_SIZE, PagedKVCache
from .pull import resolve_model
from .sampling import Sampler, SamplingParams, log_softmax
from .tokenizer import load_tokenizer
from .weights import Weights

DEFAULT_N_CTX = 4096


@dataclass
class Completion:
    """The result of a non-streaming generation."""
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOS/EOT or a stop string) or "length" (max_tokens or a full context)
    logprobs: list[float] | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Model:
    """A loaded GGUF model with its tokenizer, KV cache and a context to evaluate tokens."""

    def __init__(self, path_or_name: str | Path, n_ctx: int | None = None, n_batch: int = 512,
                 type_k: DType | str = DEFAULT_KV_TYPE, type_v: DType | str = DEFAULT_KV_TYPE,
                 backend: BackendSpec | None = None, swa_full: bool = False,
                 kv_overrides: Mapping[str, object] | None = None):
        t0 = time.perf_counter()
        self.path = resolve_model(str(path_or_name))
        self.gguf = GGUFFile(self.path)
        metadata = {**self.gguf.metadata, **(kv_overrides or {})}  # llama.cpp's --override-kv
        try:
            self.hparams: HParams = load_hparams(metadata, self.gguf.tensors)
        except PyggmlError as e:
            raise PyggmlError(f"{self.path}: {e}") from None
        self.tokenizer = load_tokenizer(self.gguf.metadata)
        self.weights = Weights(self.gguf)
        self.backend = backend or default_backend()
        self.type_k, self.type_v = as_dtype(type_k), as_dtype(type_v)  # the KV cache types (llama.cpp's -ctk/-ctv)
        self.context = self.make_context(n_ctx, n_batch, swa_full=swa_full)
        self.n_ctx, self.cache = self.context.cache.n_ctx, self.context.cache
        self.pooling = model_pooling(self.hparams)  # Model.embed's default: the GGUF's pooling_type, else last
        self._hidden = Context(self.weights, self.hparams, build_hidden, self.cache, self.backend)
        self.load_seconds = time.perf_counter() - t0

    def make_context(self, n_ctx: int | None = None, n_batch: int = 512, swa_full: bool = False) -> Context:
        """A new context (its own KV cache of the model's K/V types) over this model's weights, as
        llama_new_context_with_model."""
        hp = self.hparams
        n_ctx = min(n_ctx or DEFAULT_N_CTX, hp.n_ctx_train or DEFAULT_N_CTX)
        cache = KVCache(hp.n_layer, n_ctx, hp.n_head_kv, hp.head_dim, self.type_k, self._layer_windows(),
                        min(n_batch, n_ctx), hp.head_dim_v, swa_full, self.type_v)
        return Context(self.weights, hp, build_decoder, cache, self.backend)

    def batch_context(self, n_blocks: int, block_size: int = BLOCK_SIZE) -> BatchContext:
        """A context stepping many sequences over a paged KV cache (the model's K/V types) of n_blocks blocks per
        layer."""
        hp = self.hparams
        cache = PagedKVCache(hp.n_layer, n_blocks, hp.n_head_kv, hp.head_dim, self.type_k, self._layer_windows(),
                             block_size, hp.head_dim_v, self.type_v)
        return BatchContext(self.weights, hp, build_decoder, cache, self.backend)

    def _layer_windows(self) -> list[int | None]:
        hp = self.hparams
        return [hp.sliding_window if hp.is_swa(il) else None for il in range(hp.n_layer)]

    @classmethod
    def load(cls, path_or_name: str | Path, **options) -> Model:
        """Open a GGUF file or a known model name (pulled on first use)."""
        return cls(path_or_name, **options)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of text (BOS as the model says)."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of token ids."""
        return self.tokenizer.decode(ids, skip_special=skip_special)

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append tokens to the cached sequence; logits of the last (or every) token."""
        return self.context.eval(tokens, all_logits)

    def reset(self) -> None:
        """Forget the cached sequence."""
        self.context.reset()

    def prompt_ids(self, prompt: str | Sequence[int], parse_special: bool = True) -> list[int]:
        """Token ids of a prompt (special tokens in the text are parsed), checked against the context."""
        ids = self.tokenize(prompt, parse_special=parse_special) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise PyggmlError("the prompt is empty")
        if len(ids) > self.n_ctx:
            raise PyggmlError(f"the prompt has {len(ids)} tokens, more than the context of {self.n_ctx}")
        return ids

    def generate_ids(self, prompt_ids: Sequence[int], max_tokens: int, sampling: SamplingParams,
                     kv_cache: bool = True, logprobs: bool = False) -> Iterator[tuple[int, float | None]]:
        """(token, its log-probability if asked for) as they are produced; the prompt is prefilled first."""
        sampler, history = Sampler(sampling), list(prompt_ids)
        logits = self.context.eval_prompt(history) if kv_cache else self.context.eval_uncached(history)
        for _ in range(max_tokens):
            token = sampler.sample(logits[-1], history)
            yield token, float(log_softmax(logits[-1])[token]) if logprobs else None
            history.append(token)
            if self.tokenizer.is_eog(token) or len(history) >= self.n_ctx:
                return
            logits = self.eval([token]) if kv_cache else self.context.eval_uncached(history)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, stream: bool = False,
                 stop: Sequence[str] = (), kv_cache: bool = True, logprobs: bool = False,
                 **sampling) -> Completion | TextStream:
        """Generate a continuation: a Completion, or (stream=True) a TextStream iterating over text pieces
        (its tokens, finish_reason and timings are filled in as it runs)."""
        params = SamplingParams(**sampling)
        text_stream = TextStream(self, self.prompt_ids(prompt), max_tokens, params, stop, kv_cache, logprobs)
        if stream:
            return text_stream
        text = "".join(text_stream)
        return Completion(text, text_stream.tokens, text_stream.finish_reason,
                          text_stream.logprobs or None, text_stream.timings)

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], max_tokens: int = 128,
                       stop: Sequence[str] = (), n_parallel: int | None = None, **sampling) -> list[Completion]:
        """Generate continuations of several prompts together (continuous batching over a paged KV cache)."""
        engine = Engine(self, n_parallel=n_parallel or len(prompts), max_queue=len(prompts))
        params = SamplingParams(**sampling)
        requests = [engine.submit(self.prompt_ids(p), max_tokens, params, stop) for p in prompts]
        engine.run_until_idle()
        return [Completion(r.text, r.tokens, r.finish_reason, None, r.timings) for r in requests]

    def embed(self, inputs: str | Sequence[int] | Sequence[str | Sequence[int]], pooling: str | None = None,
              normalize: int = 2) -> list[np.ndarray]:
        """Embeddings of one input or a batch (text or token ids): per input, its tokens' output-normed hidden
        states pooled (`pooling` mean|last|cls|none, default the model's) and normalized as llama-server
        (2: Euclidean; -1: not at all): an (n_embd,) vector, or (n_tokens, n_embd) unnormalized for none."""
        batch = [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], (int, np.integer))) \
            else list(inputs)
        if not batch:
            raise PyggmlError("embed needs at least one input")
        out = []
        for item in batch:
            ids = self.tokenize(item) if isinstance(item, str) else [int(t) for t in item]
            if not ids or len(ids) > self.n_ctx:
                raise PyggmlError(f"an input to embed has {len(ids)} tokens; it must have 1 to {self.n_ctx}")
            hidden = self._hidden.eval_uncached(ids, all_logits=True)
            pooled = pool(hidden, pooling or self.pooling)
            out.append(pooled if (pooling or self.pooling) == "none" else normalize_rows(pooled, normalize))
        return out

    def chat(self, messages: Sequence[Mapping[str, str]], **options) -> Completion | TextStream:
        """Reply to a conversation rendered through the chat template."""
        return self.generate(self.chat_prompt_ids(messages), **options)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation."""
        return "".join(text for text, _ in self.chat_segments(messages, add_generation_prompt))

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation's prompt: the template's markers read as special tokens, the messages'
        content as text (a message saying "<|im_end|>" cannot end its turn)."""
        return self.tokenizer.encode_segments(self.chat_segments(messages, add_generation_prompt))

    def chat_segments(self, messages: Sequence[Mapping[str, str]],
                      add_generation_prompt: bool = True) -> list[tuple[str, bool]]:
        """The prompt of a conversation as (text, is the template's own) segments, without the BOS that
        tokenizing adds."""
        template, _ = template_source(self.gguf.metadata, self.hparams.arch)
        tok = self.tokenizer
        bos = tok.tokens[tok.bos_id] if tok.bos_id is not None else ""
        eos = tok.tokens[tok.eos_id] if tok.eos_id is not None else ""
        segments = render_chat_segments(template, messages, bos, eos, add_generation_prompt)
        if bos and tok.add_bos and segments and segments[0][1] and segments[0][0].startswith(bos):
            segments[0] = (segments[0][0][len(bos):], True)
        return segments


def load(path_or_name: str | Path, **options) -> Model:
    """Load a GGUF model by path or known name (see `pyggml pull`)."""
    return Model.load(path_or_name, **options)
