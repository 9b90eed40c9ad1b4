"""A minimal in-tree PEP 517 build backend: a pure-Python wheel from pyproject.toml, so that installing this
example needs neither the network nor the `wheel` package (pip install --no-build-isolation works offline)."""
from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip itself vendors (tomllib is tomli, adopted in 3.11)
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _files(project: dict) -> dict[str, bytes]:
    """Archive name -> bytes: the package sources and the dist-info files."""
    dist = f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    files = {p.relative_to(ROOT).as_posix(): p.read_bytes()
             for p in sorted((ROOT / "pyggml_example_backend").rglob("*.py"))}
    entry_points = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
                           for group, eps in project.get("entry-points", {}).items())
    files[f"{dist}/METADATA"] = (f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
                                 f"Summary: {project['description']}\n").encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: wheel_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/entry_points.txt"] = entry_points.encode()
    files[f"{dist}/RECORD"] = ("\n".join([_record_line(n, d) for n, d in files.items()] + [f"{dist}/RECORD,,"])
                               + "\n").encode()
    return files


def get_requires_for_build_wheel(config_settings=None) -> list[str]:
    return []


def build_wheel(wheel_directory: str, config_settings=None, metadata_directory=None) -> str:
    """Write the wheel; return its file name."""
    project = _project()
    name = f"{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in _files(project).items():
            zf.writestr(arcname, data)
    return name
