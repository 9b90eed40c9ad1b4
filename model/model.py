"""Model: a GGUF LLM loaded for inference: tokenize, evaluate, generate, chat."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from pyggml.backends import BackendSpec, default_backend
from pyggml.graph.dtypes import DType, as_dtype
from pyggml.graph.errors import PyggmlError

from .runtime.chat_template import render_chat_segments, template_source
from .runtime.batch import BatchContext
from .decoder import build_decoder, build_hidden
from .runtime.embedding import model_pooling, normalize as normalize_rows, pool
from .runtime.engine import Engine
from .runtime.generation import TextStream
from .gguf_file import GGUFFile
from .runtime.grammar import Constraint, GrammarSpec, Grammars, apply_mask, grammar_spec
from .hparams import HParams, load_hparams
from .runtime.kv_cache import BLOCK_SIZE, DEFAULT_KV_TYPE, layer_rows
from .runtime.paged_cache import PagedKVCache
from .tooling.pull import resolve_model
from .runtime.sampling import Sampler, SamplingParams, log_softmax
from .runtime.sequence import SequenceContext
from .runtime.stages import LocalPipeline, Pipeline, PipelineContext, balance, layer_windows, step_bytes
from .tokenizers.tokenizer import load_tokenizer
from .runtime.tool_calls import ToolCall, ToolFormat, parse_tool_calls, template_messages, tool_format, tool_grammar
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
                 kv_overrides: Mapping[str, object] | None = None, ray: str | None = None, stages: int = 1):
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
        self.pipeline = self._pipeline(ray, stages) if ray is not None or stages != 1 else None
        self.context = self.make_context(n_ctx, n_batch, swa_full=swa_full)
        self.n_ctx, self.cache = self.context.n_ctx, self.context.cache
        self.pooling = model_pooling(self.hparams)  # Model.embed's default: the GGUF's pooling_type, else last
        self._grammars, self._grammars_lock = None, threading.Lock()
        self.load_seconds = time.perf_counter() - t0

    def make_context(self, n_ctx: int | None = None, n_batch: int = 512, swa_full: bool = False) -> SequenceContext:
        """A new context for one sequence (its own paged KV cache of the model's K/V types, n_ctx tokens; sliding-
        window layers keep only their window's blocks unless swa_full) over this model's weights, as
        llama_new_context_with_model."""
        hp = self.hparams
        n_ctx = min(n_ctx or DEFAULT_N_CTX, hp.n_ctx_train or DEFAULT_N_CTX)
        n_batch = min(n_batch, n_ctx)
        window = (hp.sliding_window or None) if self.pipeline is None and not swa_full else None
        ring = -(-layer_rows(window, n_ctx, n_batch) // BLOCK_SIZE)
        batch = self.batch_context(-(-n_ctx // BLOCK_SIZE), window_blocks=ring, in_order=True)
        return SequenceContext(batch, n_ctx, n_batch)

    @cached_property
    def _hidden(self) -> BatchContext:
        """A context computing output-normed hidden states (embeddings) over the one-sequence cache's layout."""
        if self.pipeline is not None:
            raise PyggmlError("embeddings are not computed over pipeline stages; load the model in one process")
        return BatchContext(self.weights, self.hparams, build_hidden, self.cache, self.backend)

    def batch_context(self, n_blocks: int, block_size: int = BLOCK_SIZE, window_blocks: int | None = None,
                      in_order: bool = False) -> BatchContext:
        """A context stepping many sequences over a paged KV cache (the model's K/V types) of n_blocks blocks per
        layer (window_blocks for sliding-window layers; in_order: handed out lowest first, see BlockPool)."""
        hp = self.hparams
        cache = PagedKVCache(hp.n_layer, n_blocks, hp.n_head_kv, hp.head_dim, self.type_k, layer_windows(hp),
                             block_size, hp.head_dim_v, self.type_v, window_blocks, in_order)
        if self.pipeline is not None:  # the stages hold the K/V; this cache keeps the block tables
            return PipelineContext(self.pipeline, hp, cache)
        return BatchContext(self.weights, hp, build_decoder, cache, self.backend)

    def _pipeline(self, address: str | None, n_stages: int) -> Pipeline:
        """The layers cut into n_stages ranges balanced by the bytes a step reads: stages in this process, or
        Ray actors on the cluster at address."""
        ranges = balance(step_bytes(self.gguf.tensors, self.hparams.n_layer), n_stages)
        if address is None:
            return LocalPipeline(self.gguf, self.hparams, ranges, self.backend)
        try:
            from .runtime.ray_stages import RayPipeline
        except ImportError as e:
            raise PyggmlError(f"stages on Ray need the ray extra ({e}): pip install 'pyggml[ray]'") from None
        return RayPipeline(address, self.gguf, self.hparams, ranges, self.backend)

    def close(self) -> None:
        """Let the pipeline stages go (a model in one process holds nothing to release)."""
        if self.pipeline is not None:
            self.pipeline.shutdown()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def grammars(self) -> Grammars:
        """llguidance over this model's vocabulary (built once, on first use, by whichever thread comes first:
        0.3 s for 49k tokens, several for 262k), with its compiled grammars."""
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = Grammars(self.tokenizer)
            return self._grammars

    def constraint(self, grammar: GrammarSpec | None) -> Constraint | None:
        """A new sequence's constraint under the grammar (None for none); GrammarError naming its field."""
        return None if grammar is None else self.grammars.matcher(grammar)

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
                     kv_cache: bool = True, logprobs: bool = False,
                     constraint: Constraint | None = None) -> Iterator[tuple[int, float | None]]:
        """(token, its log-probability if asked for) as they are produced; the prompt is prefilled first; with a
        constraint, each token follows its grammar (the mask computed while the step runs) up to its end."""
        sampler, history = Sampler(sampling), list(prompt_ids)
        masks = None if constraint is None else self.grammars.start_masks([constraint])
        logits = self.context.eval_prompt(history) if kv_cache else self.context.eval_uncached(history)
        for _ in range(max_tokens):
            row = logits[-1] if masks is None else apply_mask(logits[-1], masks.result()[0])
            token = sampler.sample(row, history)
            yield token, float(log_softmax(logits[-1])[token]) if logprobs else None
            history.append(token)
            if constraint is not None:
                constraint.accept(token)
            if self.tokenizer.is_eog(token) or len(history) >= self.n_ctx or (constraint and constraint.done):
                return
            masks = None if constraint is None else self.grammars.start_masks([constraint])
            logits = self.eval([token]) if kv_cache else self.context.eval_uncached(history)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, stream: bool = False,
                 stop: Sequence[str] = (), kv_cache: bool = True, logprobs: bool = False,
                 json_schema: Mapping | str | None = None, grammar: str | GrammarSpec | None = None,
                 regex: str | None = None, choice: Sequence[str] | None = None,
                 **sampling) -> Completion | TextStream:
        """Generate a continuation: a Completion, or (stream=True) a TextStream iterating over text pieces
        (its tokens, finish_reason and timings are filled in as it runs). At most one of json_schema, grammar
        (Lark or GBNF text, or a GrammarSpec), regex and choice (strings) constrains it; a complete grammar
        ends it with finish_reason "stop"."""
        params = SamplingParams(**sampling)
        constraint = self.constraint(constraint_spec(json_schema, grammar, regex, choice))
        ids = self.prompt_ids(prompt)
        steps = self.generate_ids(ids, max_tokens, params, kv_cache, logprobs, constraint)
        text_stream = TextStream(self.tokenizer, steps, len(ids), stop, constraint)
        if stream:
            return text_stream
        text = "".join(text_stream)
        return Completion(text, text_stream.tokens, text_stream.finish_reason,
                          text_stream.logprobs or None, text_stream.timings)

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], max_tokens: int = 128,
                       stop: Sequence[str] = (), n_parallel: int | None = None,
                       json_schema: Mapping | str | None = None, grammar: str | GrammarSpec | None = None,
                       regex: str | None = None, choice: Sequence[str] | None = None,
                       **sampling) -> list[Completion]:
        """Generate continuations of several prompts together (continuous batching over a paged KV cache), each
        under the grammar if one is given (as in `generate`)."""
        engine = Engine(self, n_parallel=n_parallel or len(prompts), max_queue=len(prompts))
        params = SamplingParams(**sampling)
        spec = constraint_spec(json_schema, grammar, regex, choice)
        requests = [engine.submit(self.prompt_ids(p), max_tokens, params, stop, grammar=spec) for p in prompts]
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
            hidden = self._hidden.uncached(ids, all_logits=True)
            pooled = pool(hidden, pooling or self.pooling)
            out.append(pooled if (pooling or self.pooling) == "none" else normalize_rows(pooled, normalize))
        return out

    def chat(self, messages: Sequence[Mapping[str, str]], **options) -> Completion | TextStream:
        """Reply to a conversation rendered through the chat template."""
        return self.generate(self.chat_prompt_ids(messages), **options)

    @property
    def chat_template(self) -> str:
        """The chat template's source: the file's own, else the architecture's built-in."""
        return template_source(self.gguf.metadata, self.hparams.arch)[0]

    def apply_chat_template(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                            tools: Sequence[Mapping] | None = None) -> str:
        """The prompt text of a conversation (messages may hold tool calls and tool results; tools: OpenAI's
        function descriptions, through the template or the built-in format where it takes none)."""
        return "".join(text for text, _ in self.chat_segments(messages, add_generation_prompt, tools))

    def chat_prompt_ids(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                        tools: Sequence[Mapping] | None = None) -> list[int]:
        """Token ids of a conversation's prompt: the template's markers read as special tokens, the messages'
        content as text (a message saying "<|im_end|>" cannot end its turn)."""
        return self.tokenizer.encode_segments(self.chat_segments(messages, add_generation_prompt, tools))

    def chat_segments(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                      tools: Sequence[Mapping] | None = None) -> list[tuple[str, bool]]:
        """The prompt of a conversation as (text, is the template's own) segments, without the BOS that
        tokenizing adds."""
        messages, tools = template_messages(messages, tools, self.chat_template)
        tok = self.tokenizer
        bos = tok.tokens[tok.bos_id] if tok.bos_id is not None else ""
        eos = tok.tokens[tok.eos_id] if tok.eos_id is not None else ""
        segments = render_chat_segments(self.chat_template, messages, bos, eos, add_generation_prompt, tools)
        if bos and tok.add_bos and segments and segments[0][1] and segments[0][0].startswith(bos):
            segments[0] = (segments[0][0][len(bos):], True)
        return segments

    @property
    def tool_format(self) -> ToolFormat:
        """How this model writes tool calls (from its chat template)."""
        return tool_format(self.chat_template)

    def tool_grammar(self, tools: Sequence[Mapping], choice: str = "auto",
                     parallel: bool = True) -> GrammarSpec | None:
        """The grammar of a reply under tool_choice ("none", "auto", "required" or a function's name)."""
        return tool_grammar(tools, self.tool_format, choice, parallel, self._special_texts)

    @cached_property
    def _special_texts(self) -> dict[str, int]:
        return {self.tokenizer.tokens[i]: i for i in self.tokenizer.special_ids}

    def parse_tool_calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(the text around them, the calls) of a reply in this model's tool-call format."""
        return parse_tool_calls(text, self.tool_format)


def constraint_spec(json_schema: Mapping | str | None, grammar: str | GrammarSpec | None, regex: str | None,
                    choice: Sequence[str] | None) -> GrammarSpec | None:
    """The grammar of generate's keyword arguments (a GrammarSpec given as `grammar` passes through)."""
    if isinstance(grammar, GrammarSpec):
        if json_schema is not None or regex is not None or choice is not None:
            raise PyggmlError("give either a GrammarSpec or json_schema, regex or choice, not both")
        return grammar
    return grammar_spec(json_schema, grammar, regex, choice)


def load(path_or_name: str | Path, **options) -> Model:
    """Load a GGUF model by path or known name (see `pyggml pull`)."""
    return Model.load(path_or_name, **options)
