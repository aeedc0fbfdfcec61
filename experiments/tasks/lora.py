"""LoRA on the top blocks of the Llama of `ksurrogate_experiments.shared.llama`, as pure functions over
its flax params pytree, and the answer-token losses the fine-tunes and the estimator use.

A LoRA pytree is {"layers_i/attn/q": {"A": [I, r], "B": [r, O]}, ...} (the path of the nn.Dense it
adapts); `merge` returns the params with every adapted kernel replaced by W + scale A B, and the
unchanged Llama runs on them. Blocks below `first` are frozen: their output on every example is
computed once (`hidden_inputs`) and the adapted blocks run from it (`model.run_layers`), so a
fine-tune never pays for the frozen blocks. The LM head is applied only at answer positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ksurrogate.features import margin
from ksurrogate_experiments.shared import llama

MATRICES = ("attn/q", "attn/k", "attn/v", "attn/o", "mlp/gate", "mlp/up", "mlp/down")


def names(cfg: llama.LlamaConfig, num_layers: int) -> list[str]:
  """Paths of the adapted kernels: the 7 matrices of the top `num_layers` blocks."""
  return [f"layers_{i}/{m}" for i in range(cfg.n_layers - num_layers, cfg.n_layers) for m in MATRICES]


def _kernel(params, name):
  node = params["params"]
  for part in name.split("/"):
    node = node[part]
  return node["kernel"]


def init(key, params, adapted, rank: int) -> dict:
  """A ~ U(-1/sqrt(I), 1/sqrt(I)) (PEFT's default), B = 0: merged weights equal the pretrained ones."""
  out = {}
  for i, name in enumerate(adapted):
    I, O = _kernel(params, name).shape
    bound = 1.0 / jnp.sqrt(I)
    out[name] = {"A": jax.random.uniform(jax.random.fold_in(key, i), (I, rank), jnp.float32, -bound, bound),
                 "B": jnp.zeros((rank, O), jnp.float32)}
  return out


def with_kernels(params, kernels: dict):
  """params with the kernel at each path of `kernels` replaced (a new pytree; params unchanged)."""
  p = jax.tree.map(lambda x: x, params)   # fresh containers, shared leaves
  for name, kernel in kernels.items():
    node = p["params"]
    for part in name.split("/"):
      node = node[part]
    node["kernel"] = kernel
  return p


def merged_kernels(params, lora: dict, scale: float) -> dict:
  """{path: W + scale A B}: the adapted kernels with the LoRA folded in."""
  return {name: _kernel(params, name) + scale * ab["A"] @ ab["B"] for name, ab in lora.items()}


def merge(params, lora: dict, scale: float):
  """params with kernel W -> W + scale A B at every adapted path (a new pytree; params unchanged)."""
  return with_kernels(params, merged_kernels(params, lora, scale))


def frozen_part(params, first: int, cfg: llama.LlamaConfig):
  """The params the adapted blocks and the head read: blocks first..L-1, the final norm, the
  (tied) embedding or LM head. Everything below `first` lives only in the cached hidden states."""
  keep = {f"layers_{i}" for i in range(first, cfg.n_layers)} | {"embed", "final_norm", "lm_head"}
  return {"params": {k: v for k, v in params["params"].items() if k in keep}}


def hidden_inputs(params, cfg: llama.LlamaConfig, tokens_L, first: int):
  """The input of block `first` for one sequence [L, d] (first = 0: the token embeddings)."""
  x = llama.embed(params, cfg, tokens_L)
  return x if first == 0 else llama.run_layers(params, cfg, x, 0, first)


def answer_logits(params, cfg: llama.LlamaConfig, first: int, h_LxD, packed_3xC):
  """Logits [C, V] at the positions that predict the answer tokens (padding rows included)."""
  out = llama.run_layers(params, cfg, h_LxD, first, cfg.n_layers)
  return llama.head(params, cfg, out[packed_3xC[0]])


def answer_loss(params, cfg: llama.LlamaConfig, first: int, h_LxD, packed_3xC):
  """Mean cross-entropy over the example's answer tokens (the outcome and the training loss)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(answer_logits(params, cfg, first, h_LxD, packed_3xC),
                                                       packed_3xC[1])
  mask = packed_3xC[2].astype(ce.dtype)
  return jnp.sum(mask * ce) / jnp.maximum(jnp.sum(mask), 1.0)


def answer_margins(params, cfg: llama.LlamaConfig, first: int, h_LxD, packed_3xC):
  """[C]: per answer token, logit_y - logsumexp of the others (0 at padding). softplus(-margin) is
  that token's cross-entropy, so `MASKED_TOKEN_CE` of the margins is `answer_loss`."""
  logits = answer_logits(params, cfg, first, h_LxD, packed_3xC)
  return jax.vmap(margin)(logits, packed_3xC[1]) * packed_3xC[2]


def _masked_token_ce(o_C, packed_3xC):
  mask = packed_3xC[2].astype(o_C.dtype)
  return jnp.sum(mask * jax.nn.softplus(-o_C)) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_token_loss():
  """The estimator's OutputLoss over answer-token margins: their mean cross-entropy (labels are
  the packed [3, C] rows, whose third row masks the padding)."""
  from ksurrogate.estimation import OutputLoss
  return OutputLoss("masked_token_ce", _masked_token_ce)
