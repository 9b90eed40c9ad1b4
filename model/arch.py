"""The architectures: one row each, saying what llama.cpp fixes or defaults for it and how its decoder layer
differs from the shared skeleton in model/decoder.py. Adding an architecture is adding a row here."""
from __future__ import annotations

from dataclasses import dataclass

from pyggml import ops


@dataclass(frozen=True)
class Arch:
    """One architecture (llama.cpp's load_hparams, load_tensors and graph builder, as data)."""

    name: str
    rope_mode: int = ops.ROPE_NORMAL          # NORMAL rotates adjacent pairs, NEOX the two halves
    glu: str = "swiglu"                       # the FFN's gated unit: "swiglu" or "geglu"
    fused_qkv: bool = False                   # attn_qkv holds Q, K and V (phi3)
    fused_gate_up: bool = False               # ffn_up holds gate then up, no ffn_gate (phi3)
    qk_norm: bool = False                     # RMS-norm each Q and K head before rope (attn_q_norm, attn_k_norm)
    post_norms: bool = False                  # RMS-norm the attention and FFN outputs (attn/ffn_post_norm)
    scale_embeddings: bool = False            # token embeddings times sqrt(n_embd)
    swa_pattern: int = 0                      # with a sliding window: every n-th layer is global; 0: no SWA
    rope_freq_base_swa: float | None = None   # rope base of the sliding-window layers (None: the file's)
    rope_freq_scale_swa: float | None = None  # rope scale of the sliding-window layers (None: the file's)
    attn_softcap: float | None = None         # default attention logit soft-cap (the file's key overrides it)
    final_softcap: float | None = None        # default final logit soft-cap (the file's key overrides it)
    # the layer counts at which llama.cpp scales queries by 1/sqrt(n_embd/n_head) instead of 1/sqrt(head_dim)
    attn_scale_by_embd_layers: frozenset[int] = frozenset()


def _rows(*archs: Arch) -> dict[str, Arch]:
    return {a.name: a for a in archs}


# Biases (attn_q/k/v/output, attn_qkv, ffn_*, output) and rope_freqs (Llama 3's frequency factors) are used by
# every row whenever the file has them. Mistral files (7B, Nemo) carry the `llama` architecture.
ARCHITECTURES: dict[str, Arch] = _rows(
    Arch("llama"),
    Arch("qwen2", rope_mode=ops.ROPE_NEOX),
    Arch("qwen3", rope_mode=ops.ROPE_NEOX, qk_norm=True),
    Arch("phi3", rope_mode=ops.ROPE_NEOX, fused_qkv=True, fused_gate_up=True),
    Arch("gemma2", rope_mode=ops.ROPE_NEOX, glu="geglu", post_norms=True, scale_embeddings=True, swa_pattern=2,
         attn_softcap=50.0, final_softcap=30.0, attn_scale_by_embd_layers=frozenset({46})),
    Arch("gemma3", rope_mode=ops.ROPE_NEOX, glu="geglu", qk_norm=True, post_norms=True, scale_embeddings=True,
         swa_pattern=6, rope_freq_base_swa=10000.0, rope_freq_scale_swa=1.0,
         attn_scale_by_embd_layers=frozenset({62})),
)
