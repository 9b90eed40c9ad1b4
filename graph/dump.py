"""Graph dumps: a text table, Graphviz DOT (as ggml_graph_dump_dot), JSON that round-trips, rendering."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PyggmlError
from .tensor import Flag, Tensor

if TYPE_CHECKING:
    from .graph import Graph

JSON_FORMAT = "pyggml-graph/1"


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def _flags(t: Tensor) -> str:
    return "|".join(f.name.lower() for f in Flag if f and t.flags & f)


def to_text(g: Graph) -> str:
    """A table of leafs then nodes: index, name, op, shape, dtype, sources."""
    rows = [("kind", "#", "name", "op", "shape", "dtype", "sources")]
    for kind, items in (("leaf", g.leafs), ("node", g.nodes)):
        for i, t in enumerate(items):
            op = t.op or _flags(t) or "const"
            rows.append((kind, str(i), g.label(t), op, _shape(t), t.dtype.name,
                         ", ".join(g.label(s) for s in t.srcs)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "".join(("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]).rstrip() + "\n" for r in rows)


def _dot_escape(text: str) -> str:
    return "".join("\\" + c if c in '{}|<>"' else c for c in text)


def to_dot(g: Graph) -> str:
    """Graphviz DOT: nodes as records (name | op | shape), leafs drawn apart, edges labelled by source slot."""
    lines = ["digraph G {", "  newrank = true;", "  rankdir = TB;"]
    for t in g.nodes:
        color = "yellow" if t.flags & Flag.OUTPUT else "white"
        label = f"{_dot_escape(g.label(t))} | {t.op} | {_shape(t)} {t.dtype.name}"
        lines.append(f'  "t{t.id}" [style = filled; fillcolor = {color}; shape = record; label="{label}"];')
    for t in g.leafs:
        color = "lightblue" if t.flags & Flag.INPUT else "pink"
        label = f"<x>{_dot_escape(g.label(t))} | {_shape(t)} {t.dtype.name}"
        lines.append(f'  "t{t.id}" [style = filled; fillcolor = {color}; shape = record; label="{label}"];')
    for t in g.nodes:
        for slot, s in enumerate(t.srcs):
            lines.append(f'  "t{s.id}" -> "t{t.id}" [ arrowhead = vee; style = solid; label = "src{slot}"; ]')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _record(g: Graph, t: Tensor) -> dict:
    rec = {"id": t.id, "name": g.label(t), "op": t.op, "shape": list(t.shape), "dtype": t.dtype.name,
           "flags": int(t.flags), "srcs": [s.id for s in t.srcs], "params": t.params}
    if t.view_src is not None:
        rec.update(view_src=t.view_src.id, view_offset=t.view_offset, strides=list(t.strides))
    return rec


def to_json(g: Graph) -> str:
    """The structure (no data): every tensor with op, sources, params, and views' offset and strides."""
    doc = {"format": JSON_FORMAT, "leafs": [_record(g, t) for t in g.leafs],
           "nodes": [_record(g, t) for t in g.nodes], "outputs": [t.id for t in g.outputs]}
    return json.dumps(doc, indent=1)


def from_json(text: str) -> Graph:
    """Rebuild a graph's structure from to_json output; leafs come back without data."""
    from .graph import Graph
    doc = json.loads(text)
    if doc.get("format") != JSON_FORMAT:
        raise PyggmlError(f"not a pyggml graph dump (format {doc.get('format')!r}, expected {JSON_FORMAT!r})")
    made: dict[int, Tensor] = {}
    for rec in doc["leafs"] + doc["nodes"]:
        view_src = made[rec["view_src"]] if "view_src" in rec else None
        made[rec["id"]] = Tensor(rec["shape"], rec["dtype"], op=rec["op"], srcs=tuple(made[i] for i in rec["srcs"]),
                                 params=rec["params"], name=rec["name"], flags=Flag(rec["flags"]),
                                 view_src=view_src, view_offset=rec.get("view_offset", 0),
                                 strides=tuple(rec["strides"]) if "strides" in rec else None)
    return Graph.build([made[i] for i in doc["outputs"]])


def render(g: Graph, path: str | Path) -> str:
    """Write the DOT through Graphviz `dot` into path (format from its suffix); return the path."""
    path = Path(path)
    exe = shutil.which("dot")
    if exe is None:
        raise PyggmlError("Graphviz `dot` is not installed (apt-get install graphviz); write to_dot() instead")
    fmt = path.suffix.lstrip(".") or "svg"
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=to_dot(g), text=True, capture_output=True)
    if done.returncode != 0:
        raise PyggmlError(f"dot failed to render {path}: {done.stderr.strip()}")
    return str(path)
