"""Each architecture row on a synthetic GGUF against an independent float64 NumPy transcription of its forward
pass: prefill (whole and in chunks), token-by-token decode and the uncached path; and its chat template."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import F32_CACHE
from pyggml.graph.errors import PyggmlError
from pyggml.model.runtime.batch import Entry
from pyggml.model.model import Model
from synthetic_llama import TinyLlama, make_weights, reference_logits, write_gguf

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
           "{% endif %}{% endfor %}")
PHI3 = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
         "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + "
         "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Sum?"}]
EOS = "lll"  # the last token of the synthetic vocabulary (n_vocab 64), its EOS
CASES = {  # name -> (config, the conversation as the file's template renders it)
    "llama3": (TinyLlama(rope_freqs=True, chat_template=LLAMA3, add_bos=True),
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
               "<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nSum?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "mistral": (TinyLlama(n_embd=48, n_head=4, n_head_kv=1, key_length=16, chat_template=MISTRAL, add_bos=True),
                f"[INST] Hi [/INST]Hello{EOS}[INST] Sum? [/INST]"),
    "qwen2": (TinyLlama(arch="qwen2", untied=True, rope_base=1e6, chat_template=CHATML),
              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nSum?"
              "<|im_end|>\n<|im_start|>assistant\n"),
    "qwen2-yarn": (TinyLlama(arch="qwen2", yarn=(4.0, 8), chat_template=CHATML),
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nSum?"
                   "<|im_end|>\n<|im_start|>assistant\n"),
    "qwen3": (TinyLlama(arch="qwen3", key_length=16, chat_template=CHATML),
              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nSum?"
              "<|im_end|>\n<|im_start|>assistant\n"),
    "phi3": (TinyLlama(arch="phi3", n_head_kv=4, chat_template=PHI3),
             "<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|user|>\nSum?<|end|>\n<|assistant|>\n"),
    "gemma2": (TinyLlama(arch="gemma2", n_layer=3, eps=1e-6, sliding_window=4, attn_softcap=1.5,
                         final_softcap=3.0, chat_template=GEMMA, add_bos=True),
               "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
               "<start_of_turn>user\nSum?<end_of_turn>\n<start_of_turn>model\n"),
}
TOL = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(config, weights, GGUF path, expected chat prompt) of one architecture."""
    cfg, chat = CASES[request.param]
    weights = make_weights(cfg)
    path = write_gguf(tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}.gguf", cfg, weights)
    return cfg, weights, path, chat


@pytest.fixture
def tokens(case):
    return np.random.default_rng(1).integers(0, case[0].n_vocab, 11)


@pytest.mark.parametrize("n_batch", [512, 4])
def test_prefill_matches_numpy_forward(case, tokens, n_batch):
    cfg, weights, path, _ = case
    got = Model(path, n_ctx=64, n_batch=n_batch, **F32_CACHE).eval(tokens.tolist(), all_logits=True)
    np.testing.assert_allclose(got, reference_logits(cfg, weights, tokens), **TOL)


def test_decode_token_by_token_matches_numpy_forward(case, tokens):
    cfg, weights, path, _ = case
    model = Model(path, n_ctx=64, **F32_CACHE)
    model.eval(tokens[:3].tolist())
    got = np.concatenate([model.eval([int(t)]) for t in tokens[3:]])
    np.testing.assert_allclose(got, reference_logits(cfg, weights, tokens)[3:], **TOL)


def test_uncached_matches_numpy_forward(case, tokens):
    cfg, weights, path, _ = case
    got = Model(path, n_ctx=64, **F32_CACHE).context.eval_uncached(tokens.tolist(), all_logits=True)
    np.testing.assert_allclose(got, reference_logits(cfg, weights, tokens), **TOL)


def test_batched_steps_match_numpy_forward(case, tokens):
    """Two sequences of different lengths prefilled in one step, then decoded together (paged_attn reading each
    one's own cache rows), against the transcription of each."""
    cfg, weights, path, _ = case
    bc = Model(path, n_ctx=64, **F32_CACHE).batch_context(8)
    texts, starts = (tokens.tolist(), tokens[::-1].tolist()), (5, 2)
    seqs = [bc.cache.new_sequence() for _ in texts]
    got = [[row] for row in bc.step([Entry(s, t[:n]) for s, t, n in zip(seqs, texts, starts)])]
    for i in range(4):
        for rows, row in zip(got, bc.step([Entry(s, t[n + i:n + i + 1]) for s, t, n in zip(seqs, texts, starts)])):
            rows.append(row)
    for rows, text, n in zip(got, texts, starts):
        np.testing.assert_allclose(np.stack(rows), reference_logits(cfg, weights, np.array(text))[n - 1:n + 4], **TOL)


def test_chat_template_renders_through_jinja2(case):
    assert Model(case[2], n_ctx=64).apply_chat_template(MESSAGES) == case[3]


def test_a_file_with_maths_nothing_implements_is_refused_naming_file_and_tensor(tmp_path):
    cfg = TinyLlama(arch="phi3", n_head_kv=4)
    weights = {**make_weights(cfg), "rope_factors_long.weight": np.ones(cfg.head_dim // 2, np.float32)}
    path = write_gguf(tmp_path / "phi3-128k.gguf", cfg, weights)
    with pytest.raises(PyggmlError, match=f"{path}: phi3 model: tensor rope_factors_long.weight .longrope"):
        Model(path, n_ctx=64)
