"""Command-line options shared by the commands that load and run a model."""
from __future__ import annotations

import argparse

from pyggml.model.runtime.sampling import SamplingParams


def add_model_options(p: argparse.ArgumentParser) -> None:
    """MODEL plus context, batch and cache settings."""
    p.add_argument("model", help="a GGUF path or a known model name (see `pyggml pull`)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context length (default: min(4096, trained))")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="prefill chunk size")
    add_cache_type_options(p)
    p.add_argument("--swa-full", action="store_true", help="full-size caches for sliding-window layers too")
    add_backend_option(p)
    add_stage_options(p)


def add_stage_options(p: argparse.ArgumentParser) -> None:
    """--ray ADDRESS and --stages N: the layers as pipeline stages (see docs/distributed.md)."""
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the stages as actors on the Ray cluster at ADDRESS (auto, host:port; pip install "
                        "'pyggml[ray]')")
    p.add_argument("--stages", type=stage_count, default=None, metavar="N",
                   help="cut the layers into N pipeline stages, one per node (default: 2 with --ray, else 1)")


def stage_count(text: str) -> int:
    """An argparse type: a number of stages, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def stage_kwargs(args: argparse.Namespace) -> dict:
    """Model keyword arguments of --ray and --stages."""
    return dict(ray=args.ray, stages=args.stages or (2 if args.ray else 1))


KV_TYPE_NAMES = ("f32", "f16", "q8_0", "q4_0")


def add_cache_type_options(p: argparse.ArgumentParser) -> None:
    """llama.cpp's -ctk/--cache-type-k and -ctv/--cache-type-v (f16 by default, as llama.cpp)."""
    for short, part in (("-ctk", "k"), ("-ctv", "v")):
        p.add_argument(short, f"--cache-type-{part}", choices=KV_TYPE_NAMES, default="f16",
                       help=f"KV cache type for {part.upper()} (default f16; q8_0 halves it, q4_0 quarters it)")


def cache_types(args: argparse.Namespace) -> dict[str, str]:
    """Model's type_k and type_v keyword arguments from the cache type options."""
    return {"type_k": args.cache_type_k, "type_v": args.cache_type_v}


def add_backend_option(p: argparse.ArgumentParser) -> None:
    """--backend NAMES."""
    p.add_argument("--backend", type=backend_names, default=None, metavar="NAMES",
                   help="backends by name in priority order, the last the fallback, e.g. cupy,numpy (default: numba-q8, "
                        "llama.cpp's 8-bit activations; numba: float32 products; see `pyggml backends`)")


def backend_names(text: str) -> list[str]:
    """An argparse type: comma-separated names of known backends."""
    from pyggml.backends.registry import available
    names, known = [n.strip() for n in text.split(",") if n.strip()], available()
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(unknown) or repr(text)}; available: "
                                         f"{', '.join(known)}")
    return names


def n_predict(text: str) -> int:
    """An argparse type: -n's token count, or -1 for until EOS or a full context, as llama.cpp's."""
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (until EOS or a full context) or at least 0, not {value}")
    return value


def max_tokens(args: argparse.Namespace, model) -> int:
    """The tokens -n asks for: -1 is as many as the context holds."""
    return model.n_ctx if args.n_predict == -1 else args.n_predict


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """llama.cpp's sampling flags."""
    d = SamplingParams()
    p.add_argument("-n", "--n-predict", type=n_predict, default=128,
                   help="tokens to generate (-1: until EOS or a full context)")
    p.add_argument("--temp", type=float, default=d.temperature, help="temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--min-p", type=float, default=d.min_p)
    p.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty)
    p.add_argument("--repeat-last-n", type=int, default=d.repeat_last_n)
    p.add_argument("--seed", type=int, default=None)


def chosen_backend(args: argparse.Namespace):
    """The backend --backend names (one, a list for the scheduler, or None for the default)."""
    from pyggml.backends.registry import create
    backends = [create(name) for name in args.backend or ()]
    return backends[0] if len(backends) == 1 else backends or None


def load_model(args: argparse.Namespace):
    """The model the options name."""
    from pyggml.model.model import Model
    return Model(args.model, n_ctx=args.ctx_size, n_batch=args.batch_size, **cache_types(args),
                 swa_full=args.swa_full, backend=chosen_backend(args), **stage_kwargs(args))


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """Sampling keyword arguments for Model.generate."""
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed)
