"""`pyggml bench MODEL`: prefill and decode speed with the machine's bounds, or the KV-cache study."""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys


from .options import add_model_options, load_model

HELP = "measure prefill (pp) and decode (tg) tokens/s against the bare bounds, or run the KV-cache study"
STUDY_PROMPT = "The history of the printing press begins"
FIT_UNITS = {"a": "ms", "b": "ms per position", "c": "ms per position²"}
PLOT_HINT = "plot: pip install 'pyggml[plot]' to draw it"


def count(minimum: int):
    """An argparse type: an integer of at least minimum."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    parse.__name__ = "count"
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("-p", "--n-prompt", type=count(0), default=256, help="prompt tokens of the pp test (0: none)")
    p.add_argument("-n", "--n-gen", type=count(0), default=128, help="decode steps of the tg test (0: none)")
    p.add_argument("-r", "--repetitions", type=count(1), default=3, help="repetitions of each test")
    p.add_argument("-o", "--output", choices=("md", "json", "csv"), default="md", help="output format")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--kv-study", type=count(4), metavar="T", help="instead: T greedy tokens with and without the KV cache")
    p.add_argument("--prompt", default=STUDY_PROMPT, help="the study's prompt")
    p.add_argument("--plot", default="kv_study.png", help="the study's PNG plot")


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def used_backends(model) -> str:
    """The backends the model's latest step actually ran on, in priority order, comma-separated (over stages,
    the backends asked for and the stages)."""
    if model.pipeline is not None:
        names = model.backend.name if hasattr(model.backend, "name") else ",".join(b.name for b in model.backend)
        return f"{names}, {len(model.pipeline.ranges)} stages {model.pipeline.where}"
    return ",".join(dict.fromkeys(split.backend.name for split in model.context.last_plan.splits))


def bench_markdown(model_name: str, backend: str, rows: list, bounds) -> str:
    """llama-bench's table with the weight traffic and the ratios to the bounds, then the bounds."""
    head = ("model", "backend", "test", "t/s", "weight MB/token", "GB/s", "x F32 mat-vec bound", "x copy bandwidth")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r.to_dict()
        lines.append(f"| {model_name} | {backend} | {r.test} | {r.mean:.2f} ± {r.std:.2f} | "
                     f"{_mb(r.weight_bytes_per_token)} | {r.gbps:.2f} | {_ratio(d['ratio_matvec_bound'])} | "
                     f"{d['ratio_copy_bandwidth']:.3g} |")
    b = bounds
    matvecs = "not measured (the F32 copies would not fit)" if b.matvec_seconds is None else \
        f"take {b.matvec_seconds * 1e3:.1f} ms = {b.matvec_tps:.1f} tok/s"
    held = f"{b.n_matvecs} mat-vecs of one token read {_mb(b.weight_bytes)} MB as held; in NumPy on F32 copies " \
           f"({_mb(b.dense_bytes)} MB) they {matvecs}" if b.n_matvecs else \
           f"the stages hold the weights; a token reads {_mb(b.weight_bytes)} MB of the file"
    lines.append(f"\nbare bounds: {held}; np.copyto moves {b.copy_gbps:.2f} GB/s (read + written): reading the "
                 f"weights once per token at that rate is {b.bandwidth_tps:.1f} tok/s")
    return "\n".join(lines)


def bench_csv(model_name: str, backend: str, rows: list) -> str:
    """One line per test with every figure of the JSON row."""
    out = io.StringIO()
    dicts = [{"model": model_name, "backend": backend, **{k: v for k, v in r.to_dict().items() if k != "samples_ts"}} for r in rows]
    writer = csv.DictWriter(out, fieldnames=list(dicts[0]) if dicts else ["model"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(dicts)
    return out.getvalue().rstrip("\n")


def run_bench(args: argparse.Namespace, model) -> str:
    from pyggml.model.tooling.bench import bench
    rows, bounds = bench(model, args.n_prompt, args.n_gen, args.repetitions, args.seed)
    backend = used_backends(model)
    formats = {"md": lambda: bench_markdown(args.model, backend, rows, bounds),
               "csv": lambda: bench_csv(args.model, backend, rows),
               "json": lambda: json.dumps({"model": args.model, "backend": backend, "repetitions": args.repetitions,
                                           "bounds": bounds.to_dict(), "results": [r.to_dict() for r in rows]},
                                          indent=1)}
    return formats[args.output]()


def study_markdown(model_name: str, doc: dict) -> str:
    """The study's table of totals and speed-ups, its fits, the KV memory per token and the plot line."""
    lines = [(f"KV-cache study: {model_name}, {doc['n_prompt']} prompt tokens, {doc['n_tokens']} tokens greedy; "
              f"tokens identical with and without the cache: {'yes' if doc['identical'] else 'NO'}"), "",
             "| tokens | with cache (s) | without cache (s) | speed-up |", "|---|---|---|---|"]
    curves = doc["curves"]
    for s in doc["speedups"]:
        n = s["tokens"]
        cached, uncached = (sum(curves[c]["step_ms"][:n]) / 1e3 for c in ("cached", "uncached"))
        lines.append(f"| {n} | {cached:.2f} | {uncached:.2f} | {s['speedup']:.1f}x |")
    lines += ["", "| position p | ms per step with cache | ms per step without cache |", "|---|---|---|"]
    n = doc["n_tokens"]
    for k in sorted({1, *range(max(n // 8, 1), n, max(n // 8, 1)), n - 1}):
        lines.append(f"| {doc['positions'][k - 1]} | {curves['cached']['step_ms'][k]:.2f} | "
                     f"{curves['uncached']['step_ms'][k]:.2f} |")
    for curve, form in (("cached", "a + b·p"), ("uncached", "a + b·p + c·p²")):
        fit = curves[curve]["fit"]
        terms = ", ".join(f"{k} = {fit[k] * 1e3:.4g} {unit}" for k, unit in FIT_UNITS.items() if k in fit)
        lines.append(f"\n{'with' if curve == 'cached' else 'without'} cache, ms per step at position p = {form}: "
                     f"{terms} (R² {fit['r2']:.3f}; {fit['n_left_out']} stalled steps left out)")
    mem = doc["kv_bytes_per_token"]
    lines.append("\nKV cache per token (2 x n_layer x n_kv_head x head_dim x bytes, "
                 f"{doc['kv_type']}): " + " | ".join(f"{k} ({v['n_kv_head']} KV heads): {v['bytes']:,} B"
                                                  for k, v in mem.items()))
    if doc["plot"]:
        lines.append(f"plot: {doc['plot']}")
    return "\n".join(lines)


def study_csv(doc: dict) -> str:
    """Per step: index, position of the last token evaluated, and both times."""
    lines = ["step,position,cached_ms,uncached_ms"]
    positions = [doc["n_prompt"] - 1] + doc["positions"]
    for k, (p, c, u) in enumerate(zip(positions, doc["curves"]["cached"]["step_ms"],
                                      doc["curves"]["uncached"]["step_ms"])):
        lines.append(f"{k},{p},{c:.4f},{u:.4f}")
    return "\n".join(lines)


def progress(curve: str, k: int, n: int) -> None:
    """A progress line on a terminal's stderr."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{curve}: {k}/{n}" + ("\n" if k == n else ""))


def run_study(args: argparse.Namespace, model) -> tuple[str, bool]:
    from pyggml.model.tooling.kv_study import kv_bytes_per_token, kv_study, plot
    study = kv_study(model, model.prompt_ids(args.prompt), args.kv_study, progress)
    types = model.cache.dtype, model.cache.dtype_v
    doc = {"model": args.model, **study.to_dict(), "kv_type": "/".join(t.name for t in types),
           "kv_bytes_per_token": {k: {"n_kv_head": h, "bytes": b}
                                  for k, (h, b) in kv_bytes_per_token(model.hparams, *types).items()},
           "plot": args.plot if plot(study, args.plot, f"{args.model}: KV-cache study") else None}
    if not doc["plot"]:
        sys.stderr.write(PLOT_HINT + "\n")
    formats = {"md": lambda: study_markdown(args.model, doc), "csv": lambda: study_csv(doc),
               "json": lambda: json.dumps(doc, indent=1)}
    return formats[args.output](), study.identical


def run(args: argparse.Namespace) -> int:
    if args.kv_study is None and args.n_prompt == 0 and args.n_gen == 0:
        sys.stderr.write("pyggml bench: error: nothing to measure: -p and -n are both 0\n")
        return 2
    with load_model(args) as model:  # stages on Ray are let go at the end
        return bench_with(model, args)


def bench_with(model, args: argparse.Namespace) -> int:
    if args.kv_study is None:
        print(run_bench(args, model))
        return 0
    text, identical = run_study(args, model)
    print(text)
    if not identical:
        sys.stderr.write("pyggml bench: error: the tokens with and without the KV cache differ\n")
    return 0 if identical else 1
