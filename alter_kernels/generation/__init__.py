"""Gated decoding: entropy-routed generation with an ALTER-patched model (ALTER_SPEC sections 2, 3).

Every token is routed by the entropy of the distribution that predicted it,
``e_t = S_q(softmax(z_{t-1}))`` with ``q = config.q_route``, from the source the model's
``config.inference_entropy`` names (the same rule as every other forward of the model, see
:mod:`alter_kernels.model.inference`):

- "base" (default): the frozen base model's distributions. Prompt tokens from a base pass over
  the prompt (``lm_head_entropy``: no [B, T, V] logits kept), +inf at the first real token and
  after left padding; generated tokens from a base stream decoded beside the adapted one;
- "self": prompt tokens as "base"; each generated token by S_q of the adapted model's *raw*
  logits that produced it (before temperature, top-k/top-p or any HF logits processor);
- "none": every token high entropy.

Two entry points:

- :func:`generate` (loop.py): a fast decode loop (static KV cache, in-place step buffers, a
  decode-shaped adapter path (adapters.py, routing.py), the base stream as extra batch rows of
  the same GEMMs, CUDA graphs on GPU). Works on unpatched models too (plain decoding).
- HF ``model.generate(...)`` (and ``pipeline``) route through the model's own hooks;
  :func:`gated_decoding` (gated.py) chooses another rule for a block and records the entropies.

Imports only from the layers below (model, ops, config).
"""
from .gated import GatedDecoding, gated_decoding
from .loop import generate, generate_with
from .options import PREFILL_MODES, GenerateOptions, GenerationOutput
from .prefill import prompt_entropy
from .sampling import sample_next_token

__all__ = ["generate", "GenerationOutput", "gated_decoding", "GatedDecoding", "prompt_entropy",
           "sample_next_token", "GenerateOptions", "generate_with", "PREFILL_MODES"]
