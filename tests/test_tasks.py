"""The tasks experiment: its data, LoRA functions, LoGra features on the tiny Llama, and the tiny
config end to end through the CLI."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_experiment
from jax.flatten_util import ravel_pytree

from ksurrogate import projection
from ksurrogate_experiments.shared import llama
from ksurrogate_experiments.icl.pipeline import tiny_tokenizer
from ksurrogate_experiments.tasks import config as tasks_config
from ksurrogate_experiments.tasks import data
from ksurrogate_experiments.tasks import finetune
from ksurrogate_experiments.tasks import lora


@pytest.fixture(scope="module")
def small():
  """Texts, a tiny tokenizer, encoded examples and a random-init tiny Llama."""
  tx = data.texts(3, 2, 0)
  every = [data.full_text(p, a) for g in (*tx.train, *tx.targets) for p, a in g]
  tok = tiny_tokenizer(every, 400)
  enc = data.encode(tx.train, tok, 3, 96, 8, "task")
  cfg = llama.tiny_config(vocab_size=tok.get_vocab_size())
  return tx, tok, enc, cfg, llama.init_params(cfg, jax.random.key(0))


def test_texts_cover_every_task_with_disjoint_words():
  tx = data.texts(4, 3, 0)
  assert len(tx.train) == len(data.TRAIN_TASKS) and len(tx.targets) == len(data.TARGETS)
  word = lambda prompt: prompt.split("'")[1]  # noqa: E731
  rev = {word(p) for p, _ in tx.train[data.TRAIN_TASKS.index("reverse_letters")]}
  tgt = {word(p) for p, _ in tx.targets[data.TARGETS.index("reverse_target")]}
  assert rev and tgt and not rev & tgt
  p, a = tx.targets[data.TARGETS.index("reverse_target_upper")][0]
  assert a == word(p)[::-1].upper()
  flipped = dict(tx.train[data.TRAIN_TASKS.index("sentiment_flipped")])
  assert set(flipped.values()) <= {"positive", "negative"}


def test_encode_puts_each_answer_token_after_its_predicting_position(small):
  _, _, enc, _, _ = small
  for row, pk in zip(enc.tokens, enc.packed):
    n = int(np.count_nonzero(pk[1]))            # answer tokens; whitespace-only ones are not scored
    assert pk[2].any() and not pk[2, n:].any() and set(np.unique(pk[2])) <= {0, 1}
    np.testing.assert_array_equal(row[pk[0, :n] + 1], pk[1, :n])
  with pytest.raises(ValueError, match="^data.max_prompt_tokens:"):
    data.encode(small[0].train, small[1], 3, 8, 8, "task")


def test_merged_lora_starts_at_theta0_and_margins_give_the_loss(small):
  _, _, enc, cfg, params = small
  names = lora.names(cfg, 1)
  l0 = lora.init(jax.random.key(1), params, names, 4)
  merged = lora.merge(params, l0, 4.0)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  h = lora.hidden_inputs(params, cfg, jnp.asarray(enc.tokens[0]), 1)
  full = llama.forward(params, cfg, jnp.asarray(enc.tokens[0]))
  pk = jnp.asarray(enc.packed[0])
  np.testing.assert_allclose(lora.answer_logits(params, cfg, 1, h, pk), full[pk[0]], rtol=1e-5, atol=1e-5)
  m = lora.answer_margins(params, cfg, 1, h, pk)
  np.testing.assert_allclose(lora.masked_token_loss().value(m, pk), lora.answer_loss(params, cfg, 1, h, pk), rtol=1e-5)


def test_logra_features_of_the_llama_equal_projected_exact_gradients(small):
  _, _, enc, cfg, params = small
  names = lora.names(cfg, 1)
  l0 = lora.init(jax.random.key(1), params, names, 4)
  scale = 4.0
  frozen = lora.frozen_part(params, 1, cfg)
  H = jax.vmap(lambda t: lora.hidden_inputs(params, cfg, t, 1))(jnp.asarray(enc.tokens[:3]))
  pairs = {n: (ab["A"], ab["B"]) for n, ab in l0.items()}
  shapes = {b: v for b, v in projection.lora_shapes(pairs).items() if b.endswith("/B")}
  P = projection.projections(jax.random.key(2), shapes, projection.split_dim(64, shapes, 4))
  tapped = projection.dense_taps(lambda ex: lora.answer_margins(lora.merge(frozen, l0, scale), cfg, 1, *ex), names)
  feats = projection.featurize(tapped, P, H, enc.packed[:3], factors=projection.lora_factors(pairs, scale))
  for i in range(3):
    J = jax.jacrev(lambda lo: lora.answer_margins(lora.merge(frozen, lo, scale), cfg, 1, H[i],
                                                  jnp.asarray(enc.packed[i])))(l0)
    dense = np.concatenate([J[b[:-2]]["B"].reshape(8, -1) @ projection.kronecker(*P[b]) for b in sorted(shapes)], 1)
    np.testing.assert_allclose(feats.phi[i], dense, rtol=1e-3, atol=1e-5)
    assert not np.any(ravel_pytree({n: J[n]["A"] for n in J})[0])   # A-gradients vanish at B = 0


def test_finetune_refuses_an_empty_subset(small):
  _, _, enc, cfg, params = small
  recipe = finetune.Recipe(first=1, rank=2, alpha=2.0, lr=1e-3, num_steps=1, batch_size=2)
  with pytest.raises(ValueError, match="^S:"):
    finetune.finetune(cfg, recipe, {}, params, None, None, enc.group, np.zeros((1, 15), bool), jax.random.key(0),
                      chunk_size=1)


def test_bad_settings_are_refused_with_the_field():
  c = tasks_config.get_config("tiny")
  c.finetune.lora_layers = 3
  with pytest.raises(ValueError, match="^finetune.lora_layers:"):
    tasks_config.EXPERIMENT.validate(c)
  c = tasks_config.get_config("tiny")
  c.estimate.dim = 8
  with pytest.raises(ValueError, match="^estimate.dim:"):
    tasks_config.EXPERIMENT.validate(c)


# Seeded figures of the tiny config after its format warm-up (random-init model: its losses sit
# near ln 512 = 6.24).
PINNED = {
    ("theta0", "tasks", "target_loss", "reverse_target"): (6.2070, 2e-3),
    ("theta0", "tasks", "target_loss", "sentiment_target"): (6.3672, 2e-3),
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return run_experiment(tmp_path_factory, "tasks")


@pytest.mark.slow   # minutes: LoRA fine-tunes of the tiny Llama; the units above stay default
def test_tiny_run_holds_every_section(tiny_run):
  workdir, s, _ = tiny_run
  for key, (value, band) in PINNED.items():
    node = s
    for part in key:
      node = node[part]
    assert node == pytest.approx(value, abs=band), key
  probes = s["probes"]["tasks"]
  assert len(probes["pairs"]) == sum(len(v) for v in data.PLANTED.values())
  assert np.asarray(probes["singleton_effects"]).shape == (15, 6)
  est = s["estimator"]["tasks"]
  assert est["dim"] == 64 and est["solver"] in ("onestep", "replay") and est["seconds_real_per_subset"] > 0
  assert s["ground_truth"]["tasks"]["seeds"] == 2
  assert {"kernel_exact", "linear_exact", "kernel_estimated", "estimator_direct", "influence", "tracin",
          "trak"} <= set(s["datasets"]["tasks"])
  tasks = s["datasets"]["tasks"]
  for truth in ("drop_two", "pair_interaction"):    # the planted pairs' leave-two-out truths, every family
    for method in ("kernel_exact", "linear_exact", "estimator_direct"):
      assert tasks[method][f"{truth}_magnitude_error"] >= 0, (truth, method)
    assert s["ceiling"]["tasks"][f"{truth}_magnitude_error"] >= 0
  assert tasks["linear_exact"]["pair_interaction_magnitude_error"] == pytest.approx(1.0)   # additive: 0
  for phase in ("cache", "theta0", "finetune", "truth_seed0", "truth_seed1", "probe_seed0", "probe_seed1",
                "features", "estimate", "baselines", "selection_seed0", "selection_seed1"):
    assert (workdir / phase / "record.json").is_file(), phase


def test_the_fine_tuned_design_holds_distinct_nonempty_subsets():
  # 60 draws of 6 tasks repeat (64 subsets exist); a repeat split between the fit and held-out
  # rows would score the fit, so the design redraws it and keeps every other row's draw
  from ksurrogate_experiments.tasks import pipeline
  iid = np.asarray(jax.random.bernoulli(jax.random.key(3), 0.5, (60, 6)))
  assert len(np.unique(iid, axis=0)) < 60
  S = pipeline._bernoulli(jax.random.key(3), 60, 6)
  assert len(np.unique(S, axis=0)) == 60 and S.any(1).all()
  redrawn = min(i for i in range(60) if not iid[i].any() or any((iid[i] == iid[:i]).all(1)))
  np.testing.assert_array_equal(S[:redrawn], iid[:redrawn])     # the draw itself up to the first repeat
  few = np.asarray(jax.random.bernoulli(jax.random.key(3), 0.5, (8, 15)))   # no repeat: the plain draw
  assert len(np.unique(few, axis=0)) == 8 and few.any(1).all()
  np.testing.assert_array_equal(pipeline._bernoulli(jax.random.key(3), 8, 15), few)
