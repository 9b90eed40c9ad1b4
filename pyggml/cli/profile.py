"""`pyggml profile MODEL`: where the time and the bytes of a prefill and a decode step go, node by node."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyggml.graph.errors import PyggmlError

from .bench import count
from .options import add_model_options, load_model

HELP = "time every node of one prefill and one decode step: per op and slowest nodes, bytes, GB/s, GFLOP/s"
COLUMNS = ("count", "ms", "share", "MB read", "MB written", "GB/s", "GFLOP/s", "backend")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("-p", "--n-prompt", type=count(1), default=64, help="tokens of the profiled prefill")
    p.add_argument("--top", type=count(0), default=10, help="how many of the slowest nodes to list")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace-event JSON (open it in Perfetto)")
    p.add_argument("--graph", metavar="FILE", help="write the decode step's graph and memory plan to FILE.json "
                                                   "and FILE.dot")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def table(title: str, rows: list[dict]) -> list[str]:
    """A Markdown table of op or node totals."""
    lines = [f"\n{title}", "| name | op | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        lines.append(f"| {r['name']} | {r['op']} | {r['count']} | {r['ms']:.3f} | {r['share'] * 100:.1f} % | "
                     f"{r['bytes_read'] / 1e6:.3f} | {r['bytes_written'] / 1e6:.3f} | {r['gb_per_s']:.2f} | "
                     f"{r['gflop_per_s']:.2f} | {r['backend']} |")
    return lines


def step_text(step: dict) -> str:
    """A step's header, its per-op table and its slowest nodes."""
    copies = ", ".join(f"{c['name']} {c['src']}->{c['dst']} {c['bytes']} B {c['ms']:.3f} ms"
                       for c in step["copies"]) or "none"
    lines = [(f"## {step['step']}: {step['n_tokens']} tokens after {step['n_past']}, {step['n_nodes']} nodes on "
              f"{', '.join(step['backends'])}; wall {step['wall_ms']:.2f} ms, nodes {step['nodes_ms']:.2f} ms, "
              f"copies {step['copies_ms']:.2f} ms; "
              f"copies between backends: {copies}")]
    lines += table("per op", step["ops"])
    if step["slowest"]:
        lines += table(f"slowest {len(step['slowest'])} nodes", step["slowest"])
    return "\n".join(lines)


def write_files(args: argparse.Namespace, profiles: list) -> list[str]:
    """The trace and graph files asked for; their paths."""
    from pyggml.model.tooling.profile import chrome_trace, graph_dot, graph_json
    written = []
    if args.trace:
        Path(args.trace).write_text(json.dumps(chrome_trace(profiles)))
        written.append(args.trace)
    if args.graph:
        plan = profiles[-1].plan
        for suffix, text in ((".json", graph_json(plan)), (".dot", graph_dot(plan))):
            Path(args.graph + suffix).write_text(text)
            written.append(args.graph + suffix)
    return written


def run(args: argparse.Namespace) -> int:
    from pyggml.model.tooling.profile import profile_model
    if args.ray or (args.stages or 1) > 1:
        raise PyggmlError("profile times one process's plans; --ray and --stages are for generate, chat, bench "
                          "and serve")
    model = load_model(args)
    profiles = profile_model(model, args.n_prompt, args.seed)
    written = write_files(args, profiles)
    doc = {"model": args.model, "steps": [p.to_dict(args.top) for p in profiles], "files": written}
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print("\n\n".join([step_text(s) for s in doc["steps"]] + ["\n".join(f"wrote {f}" for f in written)]).strip())
    return 0
