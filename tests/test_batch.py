"""Batched decode over the paged KV cache against the single-sequence path: logits, shared prefixes (copy on
write), sliding windows giving blocks back, and generate_batch against generate."""
from __future__ import annotations

import numpy as np

from conftest import F32_CACHE
from pyggml.backends.numba.backend import NumbaBackend
from pyggml.model.runtime.batch import BatchContext, Entry, bucket
from pyggml.model.model import Model

TOL = 1e-4
TEXTS = ["The capital of France is", "Once upon a time, in a land far away, there lived a",
         "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22", "Hi"]


def single_logits(model: Model, tokens: list[int]) -> np.ndarray:
    """The last token's logits through the single-sequence context (the reference)."""
    model.reset()
    return model.eval(tokens)[-1]


def single_steps(model: Model, prompt: list[int], decoded: list[int]) -> np.ndarray:
    """The single-sequence context's logits for the same steps as the batch (the reference): the prompt's last
    token after its prefill, then each decoded token fed alone. Prefill against token by token is the acceptance
    tests' concern; here both sides take the same kernel paths, so the comparison isolates batching."""
    model.reset()
    return np.stack([model.eval(prompt)[-1], *(model.eval([t])[-1] for t in decoded)])


def run_batch(model: Model, prompts: list[list[int]], n_decode: int, n_blocks: int = 64) -> None:
    """Prefill the prompts in one step, decode greedily together, and check every step's logits against the
    single path's logits of each whole sequence."""
    bc = model.batch_context(n_blocks)
    seqs = [bc.cache.new_sequence() for _ in prompts]
    histories, got = [list(p) for p in prompts], [[] for _ in prompts]
    logits = bc.step([Entry(s, p) for s, p in zip(seqs, prompts)])
    for _ in range(n_decode):
        for history, row, rows in zip(histories, logits, got):
            rows.append(row)
            history.append(int(np.argmax(row)))
        logits = bc.step([Entry(s, h[-1:]) for s, h in zip(seqs, histories)])
    for prompt, history, rows in zip(prompts, histories, got):
        np.testing.assert_allclose(np.stack(rows), single_steps(model, prompt, history[len(prompt):-1]), atol=TOL,
                                   rtol=0)
    for s in seqs:
        bc.cache.release(s)
    assert bc.cache.n_used == 0


def test_bucket_pads_by_at_most_a_quarter():
    for n in range(1, 600):
        assert n <= bucket(n) < n + max(n / 4, 1) and bucket(n, 256) % 256 == 0


def test_batched_logits_equal_single_sequence(smollm2):
    run_batch(smollm2, [smollm2.tokenize(t) for t in TEXTS], n_decode=3)


def test_sliding_window_layers_give_blocks_back(gemma3_path):
    """Gemma 3 with an 24-token window: logits match the single path (a ring cache) past the window, and the
    windowed layers hold only the blocks the window still sees."""
    model = Model(gemma3_path, n_ctx=128, kv_overrides={"gemma3.attention.sliding_window": 24}, **F32_CACHE)
    prompts = [model.tokenize(TEXTS[2]), model.tokenize(TEXTS[1])]
    run_batch(model, prompts, n_decode=2)
    bc = model.batch_context(16)
    seq = bc.cache.new_sequence()
    bc.step([Entry(seq, prompts[0] * 2)])
    bs, n = bc.cache.block_size, seq.n_past
    assert sum(b is not None for b in seq.tables[24]) <= -(-n // bs) - (n - 24 + 1) // bs
    assert sum(b is not None for b in seq.tables[None]) == -(-n // bs)


def test_shared_prefix_is_held_once_and_copied_on_write(smollm2):
    """Two sequences with a common prompt prefix share its blocks; writing into the shared partial block
    copies it; both give the single path's logits."""
    system = smollm2.tokenize("You are a helpful assistant. Answer briefly and politely. Question:")
    a, b = system + smollm2.tokenize(" why?", add_special=False), system + smollm2.tokenize(" how?", add_special=False)
    bc = smollm2.batch_context(32)
    sa, sb = bc.cache.new_sequence(), bc.cache.new_sequence()
    (la,) = bc.step([Entry(sa, a)])
    n = bc.cache.shareable(sa, b)
    assert n == len(system) and n % bc.cache.block_size
    bc.cache.share_prefix(sb, sa, n)
    assert bc.cache.n_used == -(-len(a) // bc.cache.block_size)  # nothing new yet
    lb, la2 = bc.step([Entry(sb, b[n:]), Entry(sa, [int(np.argmax(la))])])
    assert sa.tables[None][n // bc.cache.block_size] != sb.tables[None][n // bc.cache.block_size]  # copied
    np.testing.assert_allclose(lb, single_logits(smollm2, b), atol=TOL, rtol=0)
    np.testing.assert_allclose(la2, single_logits(smollm2, a + [int(np.argmax(la))]), atol=TOL, rtol=0)
    shared = n // bc.cache.block_size
    assert sa.tables[None][:shared] == sb.tables[None][:shared]
    bc.cache.release(sa)
    bc.cache.release(sb)
    assert bc.cache.n_used == 0


def test_a_prompt_chunk_next_to_long_sequences_reads_its_own_rows(smollm2):
    """A step where a new prompt's chunk joins two long sequences' decode tokens takes the paged form (the mask
    would cover far more pairs than the tokens' own); every entry still gives the single path's logits."""
    long_a, long_b = (smollm2.tokenize(t * 4) for t in TEXTS[1:3])
    short = smollm2.tokenize(TEXTS[0])
    bc = smollm2.batch_context(64)
    sa, sb, sc = (bc.cache.new_sequence() for _ in range(3))
    la, lb = bc.step([Entry(sa, long_a), Entry(sb, long_b)])
    na, nb = int(np.argmax(la)), int(np.argmax(lb))
    entries = [Entry(sa, [na]), Entry(sc, short), Entry(sb, [nb])]
    assert BatchContext._paged(entries) and not BatchContext._paged([Entry(sc, short)])
    got = bc.step(entries)
    for row, tokens in zip(got, (long_a + [na], short, long_b + [nb])):
        np.testing.assert_allclose(row, single_logits(smollm2, tokens), atol=TOL, rtol=0)
    for s in (sa, sb, sc):
        bc.cache.release(s)
    assert bc.cache.n_used == 0


def test_generate_batch_equals_generate(smollm2):
    prompts = TEXTS[:3]
    done = smollm2.generate_batch(prompts, max_tokens=6, temperature=0, n_parallel=2)
    for prompt, got in zip(prompts, done):
        smollm2.reset()
        want = smollm2.generate(prompt, max_tokens=6, temperature=0)
        assert (got.tokens, got.text, got.finish_reason) == (want.tokens, want.text, want.finish_reason)


def cold_logits(bc: BatchContext, prompt: list[int]) -> np.ndarray:
    """The last token's logits of a prompt evaluated whole in a fresh sequence, then released (its full blocks
    stay cached)."""
    seq = bc.cache.new_sequence()
    row = bc.step([Entry(seq, prompt)])[0]
    bc.cache.release(seq)
    return row


def warm_logits(bc: BatchContext, prompt: list[int]) -> tuple[np.ndarray, int]:
    """(the last token's logits, tokens taken from the prefix cache) of a prompt that evaluates only what the
    cache does not hold."""
    seq = bc.cache.new_sequence()
    keys = bc.cache.prefix_keys(prompt)
    n = bc.cache.cached_blocks(keys)
    bc.cache.reuse_cached(seq, prompt, keys, n)
    row = bc.step([Entry(seq, prompt[seq.n_past:])])[0]
    bc.cache.release(seq)
    return row, n * bc.cache.block_size


def check_prefix_cache(model: Model, prompts: list[list[int]], n_blocks: int, rtol: float = 0.0) -> None:
    """Prompt a (then b) evaluated cold; a again reads its cached blocks (logits equal to the cold run's); blocks
    taken for other sequences evict the least recently used cached blocks first (b's), after which b reads what
    is left of its prefix and still gets the cold logits."""
    a, b, filler = prompts
    bc = model.batch_context(n_blocks)
    bs = bc.cache.block_size
    cold_a, cold_b = cold_logits(bc, a), cold_logits(bc, b)
    warm, hit = warm_logits(bc, a)  # a is now the most recently used
    assert hit == (len(a) - 1) // bs * bs > 0
    np.testing.assert_allclose(warm, cold_a, atol=TOL, rtol=rtol)
    pool = bc.cache.pools[None]
    need = pool.n_free - len(pool.cached) + 2  # every free block and two cached ones: the oldest, b's first
    seq = bc.cache.new_sequence()
    bc.step([Entry(seq, filler[:need * bs])])
    assert bc.cache.cached_blocks(bc.cache.prefix_keys(a)) == (len(a) - 1) // bs
    assert bc.cache.cached_blocks(bc.cache.prefix_keys(b)) == 0  # b's first block is gone, so is its prefix
    bc.cache.release(seq)
    warm, hit = warm_logits(bc, b)
    assert hit == 0
    np.testing.assert_allclose(warm, cold_b, atol=TOL, rtol=rtol)
    warm, hit = warm_logits(bc, a + [11, 12])
    assert hit == len(a) // bs * bs  # every full block of a (a + 2 tokens leaves its last token to evaluate)
    np.testing.assert_allclose(warm, cold_logits(model.batch_context(n_blocks), a + [11, 12]), atol=TOL, rtol=rtol)
    assert bc.cache.n_used == 0


def test_prefix_cache_hit_equals_a_cold_run_after_lru_eviction(smollm2):
    text = " ".join(TEXTS[:3])
    a, b = smollm2.tokenize(text * 2), smollm2.tokenize(TEXTS[2] + text)
    check_prefix_cache(smollm2, [a, b, smollm2.tokenize(text * 8)], n_blocks=len(a) // 16 + len(b) // 16 + 6)


def test_prefix_cache_with_sliding_window_layers(gemma3_path):
    """Gemma 3 with a 24-token window: a prompt past the window is found in both kinds of blocks (the windowed
    layers' cached blocks only those the next token sees)."""
    model = Model(gemma3_path, n_ctx=256, kv_overrides={"gemma3.attention.sliding_window": 24}, **F32_CACHE)
    text = " ".join(TEXTS[:3])
    a, b = model.tokenize(text * 2), model.tokenize(TEXTS[2] + text)
    # its logits reach 60 in magnitude: float32 sums in another order differ by up to 1.5e-4 there
    check_prefix_cache(model, [a, b, model.tokenize(text * 8)], n_blocks=len(a) // 16 + len(b) // 16 + 6,
                       rtol=1e-5)


def test_quantized_cache_batched_equals_single(smollm2_path):
    """A q8_0 K / q4_0 V cache: the paged steps (a prompt through the masked form over gathered rows, decode
    through paged_attn) read the same blocks as the single path's flash_attn_ext over views of them. One sequence
    a step: next to other sequences a step's products take other row counts, whose last-bit differences round
    some values to the neighbouring 4-bit level (0.2 in the logits; an F16 cache: 4e-4), as in llama.cpp."""
    model = Model(smollm2_path, n_ctx=256, type_k="q8_0", type_v="q4_0", backend=NumbaBackend())
    for text in TEXTS[:3]:
        run_batch(model, [model.tokenize(text)], n_decode=2)
