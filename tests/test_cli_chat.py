"""`pyggml chat` driven through piped input, and `pyggml generate --stats`."""
from __future__ import annotations

import io

import pytest

import pyggml
from chat_llama import write_chat_llama
from pyggml.cli import main
from pyggml.model.runtime.sequence import SequenceContext


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(write_chat_llama(tmp_path_factory.mktemp("chat") / "chat-llama.gguf"))


@pytest.fixture
def evals(monkeypatch) -> list[int]:
    """The number of tokens of every SequenceContext.eval call."""
    calls: list[int] = []
    real = SequenceContext.eval

    def counted(self, tokens, all_logits=False):
        calls.append(len(tokens))
        return real(self, tokens, all_logits)
    monkeypatch.setattr(SequenceContext, "eval", counted)
    return calls


def chat(monkeypatch, capsys, tiny: str, text: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code = main(["chat", tiny, "-n", "4", "--temp", "0", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_chat_keeps_history_and_reuses_the_cache(tiny, monkeypatch, capsys, evals):
    code, out, _ = chat(monkeypatch, capsys, tiny, "hello\n\nhow are you?\n/exit\nnot read\n", "--system", "be brief")
    replies = out.splitlines()
    assert code == 0 and len(replies) == 2  # one reply per user line; the blank line is skipped
    model = pyggml.load(tiny)
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    first = model.prompt_ids(model.apply_chat_template(history))
    history += [{"role": "assistant", "content": replies[0]}, {"role": "user", "content": "how are you?"}]
    second = model.prompt_ids(model.apply_chat_template(history))
    prefills = [n for n in evals if n > 1]
    assert prefills[0] == len(first)
    assert len(prefills) == 2 and prefills[1] <= len(second) - len(first)  # the first turn is not evaluated again


def test_chat_ends_at_end_of_input(tiny, monkeypatch, capsys):
    code, out, _ = chat(monkeypatch, capsys, tiny, "one\ntwo")
    assert code == 0 and len(out.splitlines()) == 2


def test_ctrl_c_stops_the_reply_and_the_conversation_goes_on(tiny, monkeypatch, capsys, evals):
    real = SequenceContext.eval
    state = {"left": 2}

    def interrupted(self, tokens, all_logits=False):
        if len(tokens) == 1:
            state["left"] -= 1
            if state["left"] == 0:
                raise KeyboardInterrupt
        return real(self, tokens, all_logits)
    monkeypatch.setattr(SequenceContext, "eval", interrupted)
    code, out, _ = chat(monkeypatch, capsys, tiny, "first\nsecond\n")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].endswith(" [stopped]") and "[stopped]" not in lines[1]


def test_generate_stats(tiny, capsys):
    assert main(["generate", tiny, "abc", "-n", "4", "--temp", "0", "--stats"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("abc")
    for figure in ("load:", "prompt: 3 tokens", "generated: 4 tokens", "tok/s", "KV cache:", "MiB"):
        assert figure in out.err
