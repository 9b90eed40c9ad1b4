"""Constrained decoding: llguidance's view of each vocabulary against the tokenizer, masks against the `regex`
module's partial matches, outputs validated by jsonschema and re, a batch of mixed requests against each alone,
and errors naming the field."""
from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
import regex

from chat_llama import write_chat_llama
from pyggml.graph.errors import PyggmlError
from pyggml.model.runtime.engine import Engine
from pyggml.model.runtime.grammar import GrammarError, GrammarSpec, apply_mask
from pyggml.model.model import Model
from pyggml.model.runtime.sampling import SamplingParams
from synthetic_llama import TinyLlama, make_weights, write_gguf

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
TEXTS = ["Hello, world!", "  two  spaces\nand a newline", "naïve café: 3.14 €", "{\"json\": [1, 2]}"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Model:
    """A random llama over a byte vocabulary (every byte a token) and ChatML's markers."""
    return Model(write_chat_llama(tmp_path_factory.mktemp("grammar") / "chat-llama.gguf", n_ctx=256), n_ctx=256)


@pytest.fixture(scope="module")
def letters(tmp_path_factory) -> Model:
    """The synthetic architectures' vocabulary: runs of one letter, the last token EOS."""
    cfg = TinyLlama()
    return Model(write_gguf(tmp_path_factory.mktemp("grammar") / "letters.gguf", cfg, make_weights(cfg)), n_ctx=64)


@pytest.mark.parametrize("name", ["smollm2", "gemma3", "tiny"])
def test_llguidance_sees_the_vocabulary_as_the_tokenizer(name, request):
    """llguidance's tokens decode to the text our tokenizer encoded, its EOS tokens are the end-of-generation ones,
    and control tokens are special to it (SmolLM2's GPT-2 BPE, Gemma 3's SPM, a byte vocabulary)."""
    model = request.getfixturevalue(name)
    lltok, tok = model.grammars.lltokenizer, model.tokenizer
    assert lltok.vocab_size == tok.n_vocab and set(lltok.eos_tokens) == set(tok.eog_ids)
    for text in TEXTS:
        ids = tok.encode(text, add_special=False)
        assert lltok.tokenize_str(text) == ids
        assert lltok.decode_bytes(ids) == text.encode()
    assert all(lltok.is_special_token(i) for i in tok.eog_ids)


def test_letter_vocabulary_follows_a_regex(letters):
    spec = GrammarSpec.of("regex", "(a|bb)+c")
    done = letters.generate([0, 1, 2], max_tokens=12, temperature=0, grammar=spec)
    text = letters.detokenize(done.tokens, skip_special=True)
    assert re.fullmatch("(a|bb)+c", text) or (done.finish_reason == "length" and regex.fullmatch(
        "(a|bb)+c", text, partial=True))


def test_masks_equal_the_regex_modules_partial_matches(tiny):
    """Every step's mask over the byte vocabulary allows exactly the bytes that keep a partial match, and the
    end-of-generation token exactly when the text matches whole."""
    pattern = r"(ab|c[0-9]{1,2})-?x"
    constraint = tiny.grammars.matcher(GrammarSpec.of("regex", pattern))
    eos, text = tiny.tokenizer.eos_id, ""
    for step in "c7-x":
        allowed = np.isfinite(apply_mask(np.zeros(tiny.tokenizer.n_vocab, np.float32),
                                         tiny.grammars.masks([constraint])[0]))
        want = {b for b in range(256) if regex.fullmatch(pattern, text + chr(b), partial=True)}
        assert set(np.flatnonzero(allowed[:256])) == want, text
        assert allowed[eos] == bool(re.fullmatch(pattern, text))
        constraint.accept(ord(step))
        text += step
    assert constraint.done


@pytest.mark.parametrize("kind, value, pattern", [
    ("json_schema", PERSON, None),
    ("regex", r"[0-9]{3}-[a-z]{2}", r"[0-9]{3}-[a-z]{2}"),
    ("choice", ["yes", "no", "maybe"], "yes|no|maybe"),
    ("grammar", 'root ::= "(" [a-c]+ ")" ws\nws ::= " "?', r"\([a-c]+\) ?"),  # GBNF
    ("grammar", 'start: "<" WORD ">"\nWORD: /[xyz]{1,4}/', r"<[xyz]{1,4}>"),  # Lark
])
def test_outputs_follow_the_grammar_and_stop(smollm2, kind, value, pattern):
    prompt = smollm2.apply_chat_template([{"role": "user", "content": "Describe a person as JSON."}])
    smollm2.reset()
    done = smollm2.generate(prompt, max_tokens=48, temperature=0, **{kind: value})
    assert done.finish_reason == "stop"
    if pattern is None:
        jsonschema.validate(json.loads(done.text), value)
    else:
        assert re.fullmatch(pattern, done.text), done.text


def test_gemma3_follows_a_json_schema(gemma3):
    schema = {"type": "object", "properties": {"sky": {"enum": ["blue", "green"]}, "clear": {"type": "boolean"}},
              "required": ["sky", "clear"], "additionalProperties": False}
    gemma3.reset()
    prompt = gemma3.apply_chat_template([{"role": "user", "content": "What colour is the sky? Answer in JSON."}])
    done = gemma3.generate(prompt, max_tokens=24, temperature=0, json_schema=schema)
    assert done.finish_reason == "stop"
    jsonschema.validate(json.loads(done.text), schema)


def test_streaming_and_sampling_follow_the_grammar(tiny):
    stream = tiny.generate([65, 66], max_tokens=80, stream=True, temperature=1.0, seed=3, json_schema=PERSON)
    text = "".join(stream)
    assert stream.finish_reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_a_batch_of_mixed_requests_equals_each_alone(tiny):
    """Eight requests, constrained and not, of different lengths, stepped together: each gets the tokens it gets
    alone (greedy)."""
    specs = [GrammarSpec.of("json_schema", PERSON), None, GrammarSpec.of("regex", "[A-Z][a-z]+ is [0-9]+"), None,
             GrammarSpec.of("choice", ["red", "green", "blue"]), GrammarSpec.of("json_schema", PERSON), None,
             GrammarSpec.of("grammar", 'root ::= "Answer: " [0-9]+')]
    rng = np.random.default_rng(1)
    prompts = [rng.integers(32, 127, n).tolist() for n in (3, 9, 5, 17, 4, 30, 2, 11)]
    engine = Engine(tiny, n_parallel=8, n_ctx=128)
    greedy = SamplingParams(temperature=0)
    requests = [engine.submit(p, 12, greedy, grammar=s) for p, s in zip(prompts, specs)]
    engine.run_until_idle()
    assert {r.finish_reason for r in requests} == {"stop", "length"}
    for p, s, req in zip(prompts, specs, requests):
        tiny.reset()
        want = tiny.generate(p, max_tokens=12, temperature=0, grammar=s)
        assert (req.tokens, req.text, req.finish_reason) == (want.tokens, want.text, want.finish_reason)
    assert engine.cache.n_used == 0


def test_generate_batch_takes_the_grammar(tiny):
    done = tiny.generate_batch([[65], [66, 67]], max_tokens=80, temperature=0, json_schema=PERSON)
    for c in done:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.text), PERSON)


@pytest.mark.parametrize("arguments, field", [
    ({"json_schema": {"type": "nonsense"}}, "json_schema"),
    ({"json_schema": "{not json"}, "json_schema"),
    ({"regex": "(unclosed"}, "regex"),
    ({"grammar": "root ::= missing_rule"}, "grammar"),
    ({"choice": []}, "choice"),
])
def test_a_grammar_that_does_not_compile_names_its_field(tiny, arguments, field):
    with pytest.raises(GrammarError) as caught:
        tiny.generate([65], max_tokens=4, **arguments)
    assert caught.value.field == field and str(caught.value).startswith(f"{field}: ")
    engine = Engine(tiny, n_parallel=1)
    with pytest.raises(GrammarError):
        engine.submit([65], 4, grammar=GrammarSpec.of(field, next(iter(arguments.values()))))
    assert not engine.busy


def test_one_grammar_at_a_time_and_compiled_once(tiny):
    with pytest.raises(PyggmlError, match="at most one"):
        tiny.generate([65], max_tokens=4, regex="a", json_schema=PERSON)
    spec = GrammarSpec.of("json_schema", PERSON)
    assert tiny.grammars.compile(spec) is tiny.grammars.compile(GrammarSpec.of("json_schema", PERSON))
