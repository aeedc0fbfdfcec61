"""Estimating the fine-tune (issue 17): replaying the fine-tuning recipe in the linearized model.

  python benchmarks/estimator_replay.py                                   # modular cpu config, Adam 1e-4 x 100
  python benchmarks/estimator_replay.py --recipes=adam:3e-5:100,sgd:1.4e-4:300
  python benchmarks/estimator_replay.py --set train.num_steps=150         # a theta0 that has not grokked

Builds theta0, the data and the real fine-tunes from theta0 (160 design subsets + the 25 leave-one-
out masks + the full set) with the modular pipeline's public builders, caches them under --cache
(np.savez: reruns only time and estimate; theta0 ~15 s, 186 fine-tunes ~4-10 min on 2 shared
cores), and compares estimators of the fine-tuned outcomes. Recipes are optimizer:lr:steps[:eps],
full batch: sgd (no momentum), adam (optax defaults), fadam (Adam with its second moment frozen
at theta0's full-set gradient: a fixed diagonal preconditioner, which the NTK replay follows exactly).
Estimators:

  onestep, newton      the library's ridge-regularized minimizer of the linearized loss (margin
                       features, Gaussian projection d = --proj_dim, ridge calibrated on the
                       calibration fine-tunes): what the pipeline uses today.
  param:<output>       the recipe replayed exactly (optax itself) on z = theta - theta0 in the
                       linearized model with exact (unprojected) features [N, C, D]; param:logits
                       is the accuracy reference, as costly as a real fine-tune.
  coord:<d>            the same on d coordinates of theta drawn uniformly (features rescaled by
                       sqrt(D/d) so the kernel is unbiased; for Adam the step is also scaled by
                       sqrt(D/d): sign-like steps on d of D coordinates move the outputs d/D as far).
  gauss:<d>            the same on a Gaussian projection to d (breaks Adam's diagonal).
  ntk:<precond>[:layer][:frozen][:<output>][:r<rank>][:x<c>]
                       function-space replay through the empirical NTK (exact Jacobians, kernel
                       formed once): full-batch GD is exact there. Adam is approximated by a fixed
                       diagonal preconditioner p = 1 / (sqrt(v_ref) + eps) folded into the kernel
                       (K_P = J diag(p) J^T), Adam's momentum carried exactly (it is linear in the
                       residuals), and Adam's second moment tracked as one scalar per parameter
                       group, v_t ~ b_t v_ref, b_t from the exact preconditioned gradient norms
                       r^T K_P,g r. precond: "full" (v_ref = the squared full-set gradient at
                       theta0), "design" (its mean over the design's estimated subsets, from
                       per-task gradients: uses S only) or "iso" (one value for all parameters:
                       GD with momentum at Adam's first-step size; with "frozen", b_t = 1).
                       "layer": one group (kernel block) per parameter array instead of one.
                       r<rank>: the kernel cut to its top eigenpairs; x<c>: c times fewer, c
                       times larger steps.
  lib:<output>[:<space>]
                       the library's ks.estimate_finetune (output "margin", "logits" or "top<k>";
                       space "example", "parameter" (dim = --proj_dim) or the cost rule): the
                       ntk:design:<output> replay as one public function. Its timings are its own
                       info (setup = preconditioner, Jacobians and kernels; per subset = steady state).
  outputs              margin (default; C = 1), logits (C = classes), topk<k>: the k competitors
                       ranked highest at theta0 and the rest lumped, relative to the label's
                       logit (C = k + 1; cross-entropy exact at theta0; k = 0 is the margin).
  <any replay>+cal     a scalar step scale chosen on the calibration fine-tunes (median relative
                       error over 2^[-2, 2]); without it the recipe's own learning rate is used.
  lib:...+lib          the same choice made by the library (ks.estimate_finetune(calibrate=...)).

Per estimator x recipe it prints: median relative error on the held-out fine-tunes, the no-change
error (theta0's own outcome) and their ratio; LDS of the estimate vs the held-out fine-tunes;
surrogate ratio (LOO Pearson vs the fine-tuning LOO of kernel surrogates fitted on the estimates of
the fit subsets / fitted on the same subsets' real fine-tunes); the estimator's own LOO vs the
fine-tuning LOO; the recipe's first-order error (paper's definition, median over the scored
fine-tunes); 95 % bootstrap intervals of the error and the LDS over the held-out subsets; seconds per subset (estimate warm over 186 subsets; featurization share = the
estimator's one-time features / kernels / statistics, warm, divided by --num_estimated subsets)
vs a real fine-tune of the same recipe timed warm in the same run; the estimator's stored-state
memory. fit_rel_error / fit_lds: the same on the fit fine-tunes (the subsets surrogates are
fitted on), the only columns an estimator may be chosen by. Nothing is selected on the held-out fine-tunes or on leave-one-out: ridges and step
scales are calibrated on the first finetune.num_calibration fine-tunes only. Rows of --reuse
estimators found in the cache carry the timings of the run that made them (reused = True).
"""
from __future__ import annotations



import dataclasses  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import common  # noqa: E402
import ksurrogate as ks  # noqa: E402
from ksurrogate_experiments.modular import config as config_lib  # noqa: E402
from ksurrogate_experiments.modular import pipeline as P  # noqa: E402
from ksurrogate import batching, estimation, features, metrics  # noqa: E402
from ksurrogate.harness import report  # noqa: E402

_CACHE = flags.DEFINE_string("cache", "/tmp/estimator_replay", "folder for theta0 and the real fine-tunes")
_CONFIG = flags.DEFINE_string("config", "cpu", "modular config")
_SET = flags.DEFINE_multi_string("set", [], "section.field=value on top of the config (e.g. train.num_steps=150)")
_RECIPES = flags.DEFINE_list("recipes", ["adam:1e-4:100"], "fine-tuning recipes from theta0: optimizer:lr:steps")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["onestep", "newton", "param:margin", "ntk:gd+cal", "ntk:full", "ntk:design", "ntk:design+cal",
                   "ntk:design:layer", "coord:1024", "coord:1024+cal"],
    "estimators to compare (see the module docstring)")
_NUM_ESTIMATED = flags.DEFINE_integer("num_estimated", 2000, "subsets the one-time featurization is shared over "
                                      "(the modular config's estimate.num_subsets)")
_PROJ_DIM = flags.DEFINE_integer("proj_dim", 256, "projection dimension of onestep / newton")
_OUT = flags.DEFINE_string("out", None, "write every row as JSON here")
_NTK_CHUNK = flags.DEFINE_integer("ntk_chunk", 64, "subsets per compiled chunk of the NTK replays (one GEMM per step)")
_REUSE = flags.DEFINE_list("reuse", ["param:logits", "param:topk1", "param:topk2", "param:margin"],
                           "estimators whose estimates (and timings, from the run that made them) are reused from "
                           "--cache when there (the costly references); every other estimator is timed in this run")


# ----------------------------------------------------------------------------------------------
# Solvers (written to move into ksurrogate/estimation.py): each maps subset weights to target outputs.

@dataclasses.dataclass(frozen=True)
class Recipe:
  """Full-batch fine-tuning from theta0: optax.sgd (no momentum), optax.adam with its defaults, or
  "fadam": Adam with its second moment frozen at theta0's, i.e. momentum (Adam's debiased EMA of
  the gradients) scaled per parameter by p = 1 / (|g| + eps), g the full-set gradient at theta0
  (a fixed diagonal preconditioner: its first step is lr sign(g), as Adam's; the NTK replay
  follows it exactly in the linearized model)."""
  optimizer: str
  lr: float
  steps: int
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  @classmethod
  def parse(cls, text: str) -> "Recipe":
    """optimizer:lr:steps[:eps]"""
    opt, lr, steps, *eps = text.split(":")
    if opt not in ("sgd", "adam", "fadam"):
      raise ValueError(f"recipes: optimizer must be sgd, adam or fadam, got {opt!r}")
    return cls(opt, float(lr), int(steps), eps=float(eps[0]) if eps else 1e-8)

  def optax(self, lr, precond=None) -> optax.GradientTransformation:
    """`precond`: p (a pytree like the parameters) for "fadam"."""
    if self.optimizer == "sgd":
      return optax.sgd(lr)
    if self.optimizer == "adam":
      return optax.adam(lr, self.b1, self.b2, self.eps)
    return optax.chain(optax.ema(self.b1, debias=True),
                       optax.stateless(lambda u, _: jax.tree.map(jnp.multiply, u, precond)),
                       optax.scale(-lr))

  def __str__(self):
    return f"{self.optimizer}:{self.lr:g}:{self.steps}" + (f":{self.eps:g}" if self.eps != 1e-8 else "")


def frozen_preconditioner(loss_fn, params0, data, eps: float = 1e-8):
  """p = 1 / (|g| + eps) of the "fadam" recipe, g = the full-set mean-loss gradient at params0."""
  w = jnp.ones(batching.num_rows(data))
  g = jax.grad(loss_fn)(params0, jax.tree.map(jnp.asarray, data), w)
  return jax.tree.map(lambda a: 1.0 / (jnp.abs(a) + eps), g)


def _output_grads(loss, o_NxC, y_N, w_N):
  """dL/do for L = sum_n w_n loss(o_n, y_n): the residuals [N, C] one step sends back."""
  return w_N[:, None] * jax.vmap(jax.grad(loss.value))(o_NxC, y_N)


@functools.partial(jax.jit, static_argnames=("recipe", "loss", "target_loss"))
def replay_params(phi_NxCxd, o0_NxC, y_N, W_mxN, phi_TxCxd, o0_TxC, y_T, scale, precond_d=None, *, recipe, loss,
                  target_loss):
  """The recipe run with optax on z in the linearized model o = o0 + phi z, one model per row of
  W (normalized example weights: the fine-tune's weighted mean loss). Exact for any optimizer
  when phi holds every parameter's gradient; costs 2 N C d per step and subset. The targets'
  outputs (phi_T, o0_T) may be of another kind than the training outputs (e.g. every logit where
  training used margins), scored by `target_loss`. -> [m, T] losses."""
  opt = recipe.optax(recipe.lr * scale, precond_d)

  def one(w):
    def step(carry, _):
      z, state = carry
      o = o0_NxC + jnp.einsum("ncd,d->nc", phi_NxCxd, z)
      g = jnp.einsum("ncd,nc->d", phi_NxCxd, _output_grads(loss, o, y_N, w))
      upd, state = opt.update(g, state, z)
      return (z + upd, state), None
    z0 = jnp.zeros(phi_NxCxd.shape[-1], phi_NxCxd.dtype)
    (z, _), _ = jax.lax.scan(step, (z0, opt.init(z0)), None, length=recipe.steps)
    return target_loss.values(o0_TxC + jnp.einsum("tcd,d->tc", phi_TxCxd, z), y_T)

  return jax.vmap(one)(W_mxN)


@functools.partial(jax.jit, static_argnames=("recipe", "loss", "target_loss", "track"))
def replay_example(K_GxNCxNC, Kt_GxTCxNC, qref_G, o0_NxC, y_N, W_mxN, o0_TxC, y_T, scale, *, recipe, loss, target_loss,
                   track=True):
  """The recipe run in function space through the empirical NTK of the outputs o [N, C] (C = 1 for
  margins), rows and columns of the kernel flattened over (example, output).

  K_G [G, NC, NC] = J_g diag(p_g) J_g^T per parameter group g; Kt_G [G, T C', NC] the target rows,
  whose outputs (o0_T [T, C']) may be of another kind than the training outputs (e.g. every logit
  where training uses margins), scored by `target_loss`. Full-
  batch GD (p = 1, G = 1) is exact: o_{t+1} = o_t - lr K r_t. Adam's momentum is linear in the
  residuals, so it is carried exactly (its kernel image too); its second moment is approximated per
  group by one scalar, v_t ~ b_t v_ref with b_t = EMA(r^T K_g r) / qref_g (qref_g = sum_i
  v_ref,i p_i over the group), so an Adam step is -lr m_hat_t p / sqrt(b_t): with p = 1 / sqrt(v_ref)
  and a subset whose gradient is v_ref's it is lr sign(g), as Adam's first step. One group per
  parameter makes this exact Adam (up to eps). Per step and subset: G (N C)^2 (a GEMM over subsets).
  Targets need no kernel product until the end: o_T = o0_T - sum_g Kt_g (sum_t step_t,g m_t).
  -> [m, T] losses."""
  G, NC, _ = K_GxNCxNC.shape
  N, C = o0_NxC.shape
  lr = recipe.lr * scale
  K_GxNxN, o0_N = K_GxNCxNC, o0_NxC.reshape(-1)      # from here on a row is one (example, output)

  def one(w):
    def grad_out(f):
      return _output_grads(loss, f.reshape(N, C), y_N, w).reshape(-1)

    if recipe.optimizer == "sgd":
      def step(carry, _):
        f, acc = carry
        r = grad_out(f)
        return (f - lr * jnp.einsum("gij,j->i", K_GxNxN, r), acc + lr * r), None
      (_, acc), _ = jax.lax.scan(step, (o0_N, jnp.zeros(NC)), None, length=recipe.steps)
      acc_G = jnp.broadcast_to(acc, (G, NC))
    else:
      b1, b2 = recipe.b1, recipe.b2

      def step(carry, t):
        f, m, mu, v, acc = carry
        r = grad_out(f)
        u = jnp.einsum("gij,j->gi", K_GxNxN, r)            # K_g r: the preconditioned step's image per group
        m = b1 * m + (1 - b1) * r
        mu = b1 * mu + (1 - b1) * u                         # = K_g m, kept without another product
        v = b2 * v + (1 - b2) * (u @ r)                     # EMA of r^T K_g r = sum_i p_i g_i^2 over group g
        vhat = v / (1 - b2 ** t)
        # (floored: a group whose gradient is exactly 0 has m = 0 too, and takes no step)
        step_g = lr / (1 - b1 ** t) / (jnp.sqrt(jnp.maximum(vhat / qref_G, 1e-30)) if track else jnp.ones(G))
        return (f - step_g @ mu, m, mu, v, acc + step_g[:, None] * m[None]), None

      init = (o0_N, jnp.zeros(NC), jnp.zeros((G, NC)), jnp.zeros(G), jnp.zeros((G, NC)))
      (_, _, _, _, acc_G), _ = jax.lax.scan(step, init, jnp.arange(1, recipe.steps + 1, dtype=jnp.float32))
    o_T = o0_TxC - jnp.einsum("gtn,gn->t", Kt_GxTCxNC, acc_G).reshape(o0_TxC.shape)
    return target_loss.values(o_T, y_T)

  return jax.vmap(one)(W_mxN)


@functools.partial(jax.jit, static_argnames=("recipe", "loss", "target_loss", "track"))
def replay_eigen(U_NCxr, s2_r, KtU_TCxr, qref, o0_NxC, y_N, W_mxN, o0_TxC, y_T, scale, *, recipe, loss, target_loss,
                 track=True):
  """`replay_example` (one group) with the kernel cut to its top r eigenpairs, K ~ U diag(s2) U^T:
  the function changes only inside span(U), so a step costs 2 N C r instead of (N C)^2. The same
  as replaying in parameter space along the top r principal directions of the preconditioned
  Jacobian P^1/2 J^T (the projection that keeps most of the kernel), not a random one.
  KtU = Kt U [T C', r]. -> [m, T] losses."""
  N, C = o0_NxC.shape
  r_dim = s2_r.shape[0]
  lr = recipe.lr * scale
  o0 = o0_NxC.reshape(-1)

  def one(w):
    def residual_coords(e):                 # U^T r at the outputs o0 - U (s2 * e)
      f = o0 - U_NCxr @ (s2_r * e)
      return U_NCxr.T @ _output_grads(loss, f.reshape(N, C), y_N, w).reshape(-1)

    if recipe.optimizer == "sgd":
      def step(e, _):
        return e + lr * residual_coords(e), None
      e, _ = jax.lax.scan(step, jnp.zeros(r_dim), None, length=recipe.steps)
    else:
      b1, b2 = recipe.b1, recipe.b2

      def step(carry, t):
        e, mu, v = carry
        a = residual_coords(e)
        mu = b1 * mu + (1 - b1) * a                         # U^T m: momentum in the eigenbasis
        v = b2 * v + (1 - b2) * jnp.sum(s2_r * a * a)       # r^T K r within the kept eigenpairs
        vhat = v / (1 - b2 ** t)
        step_t = lr / (1 - b1 ** t) / (jnp.sqrt(vhat / qref) if track else 1.0)
        return (e + step_t * mu, mu, v), None

      (e, _, _), _ = jax.lax.scan(step, (jnp.zeros(r_dim), jnp.zeros(r_dim), jnp.zeros(())),
                                  jnp.arange(1, recipe.steps + 1, dtype=jnp.float32))
    o_T = o0_TxC - (KtU_TCxr @ e).reshape(o0_TxC.shape)
    return target_loss.values(o_T, y_T)

  return jax.vmap(one)(W_mxN)


# ----------------------------------------------------------------------------------------------
# Exact Jacobians and kernels at theta0.

def topk_output_fn(apply_fn):
  """(params, x, ranked [k + 1]) -> [f_c1 - f_label, ..., f_ck - f_label, logsumexp(others) - f_label]:
  the k competitors ranked highest at theta0 and the rest lumped in one output, each relative to
  the label's logit. The cross-entropy is exactly log(1 + sum_j exp(o_j)) (`COMPETITORS`); k = 0
  is minus the margin, k = C - 1 every logit. Linearizing it freezes only the softmax inside the
  lumped rest."""
  def fn(params, x, ranked):
    logits = apply_fn(params, x[None])[0]
    rest = jnp.ones(logits.shape[-1], bool).at[ranked].set(False)
    lse_rest = jax.nn.logsumexp(jnp.where(rest, logits, -jnp.inf))
    return jnp.concatenate([logits[ranked[1:]], lse_rest[None]]) - logits[ranked[0]]
  return fn


def _competitors_ce(o, y):
  del y   # the outputs are already relative to the label's logit
  return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1, o.dtype), o]))


COMPETITORS = estimation.OutputLoss("competitors_cross_entropy", _competitors_ce)


def ranked_classes(apply_fn, params0, X, y, k: int):
  """[N, k + 1]: each example's label, then its k highest other logits at params0."""
  logits = np.array(apply_fn(params0, jnp.asarray(X)))
  logits[np.arange(len(y)), y] = np.inf
  return np.argsort(-logits, axis=1)[:, :k + 1].astype(np.int32)


@functools.lru_cache(maxsize=8)
def jacobian_fn(apply_fn, params_bytes, output: str):
  """A jitted fn(x_batch, y_batch) -> (J [B, C, D], outputs [B, C]): every example's output vector
  differentiated with respect to every parameter, unprojected (vmap of jacrev). Cached per
  (model, params, output), so a second call reuses the compiled program."""
  params0 = _PARAMS[params_bytes]
  flat0, unravel = ravel_pytree(params0)
  if output.startswith("topk"):
    topk = topk_output_fn(apply_fn)
    out = lambda params, ex: topk(params, *ex)  # noqa: E731
  else:
    out = features.output_fn(apply_fn, output)

  @jax.jit
  def batch(xb, yb):
    def one(xi, yi):
      f = lambda flat: out(unravel(flat), (xi, yi))  # noqa: E731
      return jax.jacrev(f)(flat0), f(flat0)
    return jax.vmap(one)(xb, yb)
  return batch


_PARAMS = {}


def exact_jacobians(apply_fn, params0, X, y, output: str, batch_size: int = 64):
  """(J [N, C, D], outputs [N, C]) of all examples, in batches of one compiled shape."""
  key = hashlib.sha1(np.asarray(ravel_pytree(params0)[0]).tobytes()).hexdigest()
  _PARAMS[key] = params0
  fn = jacobian_fn(apply_fn, key, output)
  return batching.chunked_map(fn, np.asarray(X), np.asarray(y), chunk_size=batch_size)


def warm_seconds(fn, *args):
  """Seconds of fn(*args) once compiled: called once to compile (and discarded), then timed."""
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return out, time.perf_counter() - t0


def parameter_groups(params0, groups: str):
  """Slices of the flattened parameters: one (global) or one per parameter array (layer)."""
  if groups == "global":
    return [slice(0, ravel_pytree(params0)[0].shape[0])]
  sizes = [x.size for x in jax.tree.leaves(params0)]
  ends = np.cumsum(sizes)
  return [slice(int(e - n), int(e)) for e, n in zip(ends, sizes)]


@jax.jit
def _group_kernel(Ja, Jb, p):
  return (Ja * p) @ Jb.T


def example_kernels(J_NxD, Jt_TxD, p_D, slices):
  """K [G, N, N], Kt [G, T, N] with K_g = J_g diag(p_g) J_g^T, and qref [G] = sum_i p_i v_ref,i."""
  K = jnp.stack([_group_kernel(J_NxD[:, s], J_NxD[:, s], p_D[s]) for s in slices])
  Kt = jnp.stack([_group_kernel(Jt_TxD[:, s], J_NxD[:, s], p_D[s]) for s in slices])
  return K, Kt


# ----------------------------------------------------------------------------------------------
# theta0, the real fine-tunes and their cache.

def _built_from(c) -> dict:
  """The config sections theta0, the fine-tunes and the estimators here read: everything but the
  pipeline's own estimator block (whose fields do not change what is cached)."""
  d = c.to_dict()
  d.pop("estimate")
  return {**d, "feature_batch": c.estimate.feature_batch}


def _tag(obj) -> str:
  return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build(c, cache: pathlib.Path):
  s = P.setup(c)
  dsg = P.design(c, s)
  path = cache / f"theta0_{_tag(_built_from(c))}.npz"
  template = s.init_fn(s.init_key)
  _, unravel = ravel_pytree(template)
  if path.is_file():
    params = unravel(jnp.asarray(np.load(path)["flat"]))
  else:
    th = P.theta0(c, s)
    params = th.params
    np.savez(path, flat=np.asarray(ravel_pytree(params)[0]), curve=th.curve)
  return s, dsg, P.Theta0(params=params, checkpoints={}, curve=np.zeros(0))


def finetunes(c, s, dsg, th, recipe: Recipe, cache: pathlib.Path):
  """Real fine-tunes of the first finetune.num_subsets design subsets and the LOO masks + full set
  (cached), and the warm seconds per subset of one chunk timed now (for the side-by-side ratio)."""
  cf = c.copy_and_resolve_references()
  if recipe.optimizer == "fadam":
    precond = frozen_preconditioner(s.loss_fn, th.params, s.train_data, recipe.eps)
    run_fn = ks.trainer(s.loss_fn, recipe.optax(recipe.lr, precond), num_steps=recipe.steps)
  else:
    cf.finetune.optimizer, cf.finetune.lr, cf.finetune.num_steps = recipe.optimizer, recipe.lr, recipe.steps
    run_fn = P.finetune_recipe(cf, s)
  S_all = np.concatenate([dsg.S_est[:c.finetune.num_subsets], dsg.S_truth])
  n = c.design.chunk_size
  P.finetune_chunk(cf, S_all[:n], 0, s, th, run_fn)    # compile outside the timing
  seconds_now = float(P.finetune_chunk(cf, S_all[:n], 0, s, th, run_fn)["seconds"][0])   # training only
  path = cache / f"ft_{_tag([_built_from(c), str(recipe)])}.npz"
  if path.is_file():
    z = np.load(path)
    return dict(z), seconds_now
  outs = [P.finetune_chunk(cf, S_all[i:i + n], i // n, s, th, run_fn) for i in range(0, len(S_all), n)]
  out = {k: np.concatenate([o[k] for o in outs]) for k in ("F", "linearization_error", "seconds")}
  np.savez(path, **out)
  return out, seconds_now


# ----------------------------------------------------------------------------------------------
# Estimators: each returns (estimate(S, scale) -> [m, T], one-time seconds, state bytes, calibrate?).

@dataclasses.dataclass
class Context:
  c: object
  s: object
  dsg: object
  th: object
  recipe: Recipe
  cache_feats: dict        # one-time pieces shared across estimators (their time is charged to each)


def _weights(S, task):
  W = np.asarray(S, np.float32)[:, task]
  return W / W.sum(1, keepdims=True)


def _jacobians(ctx: Context, output: str, which: str = "both"):
  """Exact Jacobians of the training and target examples (J [N, C, D], outputs [N, C], the labels
  their loss takes; the same for the targets) and the warm seconds they took. output: "margin",
  "logits" or "topk<k>". which="target": the training examples' are not needed."""
  key = f"jac_{output}_{which}"
  if key not in ctx.cache_feats:
    s, params = ctx.s, ctx.th.params
    def labels(X, y):
      return ranked_classes(s.apply_fn, params, X, y, int(output[4:])) if output.startswith("topk") else y

    def lab_loss(y):   # the label the output loss takes
      return np.zeros(len(y), np.int32) if output.startswith("topk") else np.asarray(y, np.int32)
    J = o = None
    t_tr = 0.0
    if which == "both":
      (J, o), t_tr = warm_seconds(exact_jacobians, s.apply_fn, params, s.d.X_train, labels(s.d.X_train, s.d.y_train),
                                  output)
    (Jt, ot), t_tg = warm_seconds(exact_jacobians, s.apply_fn, params, s.X_val, labels(s.X_val, s.y_val), output)
    ctx.cache_feats[key] = (J, o, jnp.asarray(lab_loss(s.d.y_train)), Jt, ot, jnp.asarray(lab_loss(s.y_val)), t_tr + t_tg)
  return ctx.cache_feats[key]


def output_loss(output: str):
  return {"margin": estimation.LOGISTIC, "logits": estimation.SOFTMAX_CROSS_ENTROPY}.get(output, COMPETITORS)


def _projected_features(ctx: Context, dim: int):
  """The library's margin features (Gaussian projection to dim), timed warm."""
  s, c = ctx.s, ctx.c
  fn = features.make_featurizer(s.apply_fn, ctx.th.params, key=jax.random.key(c.seed + 5), dim=dim)
  def run(X, y):
    return batching.chunked_map(fn, np.asarray(X), np.asarray(y), chunk_size=c.estimate.feature_batch)
  (phi, o), t_tr = warm_seconds(run, s.d.X_train, s.d.y_train)
  (phit, ot), t_tg = warm_seconds(run, s.X_val, s.y_val)
  tr = features.Features(np.asarray(phi), np.asarray(o), s.d.y_train.astype(np.int32), "margin")
  tg = features.Features(np.asarray(phit), np.asarray(ot), s.y_val.astype(np.int32), "margin")
  return tr, tg, t_tr + t_tg


def _v_ref(ctx: Context, which: str, J, o, y, loss):
  """Adam's reference second moment per parameter: the squared full-set gradient at theta0
  ("full"), or its mean over the design's estimated subsets ("design": per-task gradient sums
  combined per subset; uses the subsets S only, no outcome)."""
  s, dsg = ctx.s, ctx.dsg
  r = jax.vmap(jax.grad(loss.value))(o, y)                                   # dCE/do per example [N, C]
  g_NxD = jnp.einsum("nc,ncd->nd", r, J)
  G_KxD = jax.ops.segment_sum(g_NxD, jnp.asarray(s.d.task_train), num_segments=s.K)
  counts = np.bincount(s.d.task_train, minlength=s.K)
  if which == "full":
    g = G_KxD.sum(0) / counts.sum()
    return g ** 2
  S = np.asarray(dsg.S_est, np.float32)
  g_mxD = (S @ np.asarray(G_KxD)) / (S @ counts)[:, None]
  return jnp.asarray((g_mxD ** 2).mean(0))


def make_estimator(ctx: Context, name: str):
  base, _, cal = name.partition("+")
  parts = base.split(":")
  s, recipe = ctx.s, ctx.recipe
  task = s.d.task_train

  if parts[0] == "lib":
    if recipe.optimizer == "fadam":
      raise ValueError("estimators: lib follows sgd or adam recipes only")
    output = parts[1] if len(parts) > 1 else "top1"
    space = parts[2] if len(parts) > 2 else "auto"
    out = features.output_fn(s.apply_fn, output)
    lib_loss = estimation.default_loss(output)

    calibration = {}

    def fn_lib(S, scale):
      rec = ks.Recipe(recipe.optimizer, recipe.lr * scale, recipe.steps, recipe.b1, recipe.b2, recipe.eps)
      F, info = ks.estimate_finetune(out, ctx.th.params, (s.d.X_train, s.d.y_train), task, S, (s.X_val, s.y_val),
                                     recipe=rec, loss=lib_loss, space=space, dim=_PROJ_DIM.value,
                                     key=jax.random.key(ctx.c.seed + 5), chunk_size=_NTK_CHUNK.value,
                                     calibrate=calibration.get("set"), return_info=True)
      fn_lib.info = info
      return F

    def calibrate_in_library(S_cal, F_cal):   # "+lib": estimate_finetune(calibrate=...) picks the scale
      calibration["set"] = (S_cal, F_cal)
      return 1.0
    return fn_lib, 0.0, 0, (calibrate_in_library if cal == "lib" else _calibrate_scale if cal else None)

  if parts[0] in ("onestep", "newton"):
    tr, tg, t_feat = _projected_features(ctx, _PROJ_DIM.value)
    est = dict(method=parts[0])
    setup = t_feat
    if parts[0] == "onestep":
      est["stats"], t_stats = warm_seconds(ks.task_statistics, tr, task, s.K)
      setup += t_stats
    nbytes = (s.K * _PROJ_DIM.value ** 2 * 8 if parts[0] == "onestep" else tr.phi.nbytes) + tg.phi.nbytes
    ridge_box = {}

    def fn(S, scale):
      return np.asarray(ks.estimate(tr, task, S, tg, ridge=ridge_box.get("ridge", scale), **est))

    def calibrate(S_cal, F_cal):
      ridge, _ = ks.calibrate_ridge(tr, task, tg, S_cal, F_cal, grid=10.0 ** np.arange(-1.0, 8.0), **est)
      ridge_box["ridge"] = ridge
      return ridge
    return fn, setup, nbytes, calibrate

  # Replays. Output kinds: "margin" (default), "logits", "topk<k>"; "tlogits": the training
  # dynamics on margins, the target outcome read from every logit.
  tlogits = "tlogits" in parts
  kinds = [p_ for p_ in parts[1:] if p_ in ("margin", "logits") or p_.startswith("topk")]
  output = kinds[0] if kinds else "margin"
  J, o, y, Jt, ot, yt, setup = _jacobians(ctx, output)
  loss = tloss = output_loss(output)
  if tlogits:
    _, _, _, Jt, ot, yt, t_tl = _jacobians(ctx, "logits", "target")
    setup += t_tl
    tloss = output_loss("logits")

  if parts[0] in ("param", "coord", "gauss"):
    t0 = time.perf_counter()
    D = J.shape[-1]
    step_scale = 1.0
    precond = None
    if recipe.optimizer == "fadam":
      precond = ravel_pytree(frozen_preconditioner(s.loss_fn, ctx.th.params, s.train_data, recipe.eps))[0]
    if parts[0] == "coord":
      d = int(parts[1])
      idx = np.sort(np.random.default_rng(ctx.c.seed).choice(D, d, replace=False))
      rescale = math.sqrt(D / d)
      J, Jt = J[..., idx] * rescale, Jt[..., idx] * rescale
      step_scale = rescale if recipe.optimizer == "adam" else 1.0
      precond = None if precond is None else precond[idx]
    elif parts[0] == "gauss":
      d = int(parts[1])
      Pm = features.projection_matrix(jax.random.key(ctx.c.seed + 5), D, d)
      if precond is not None:   # fold p^1/2 into the features before mixing the parameters
        J, Jt, precond = J * jnp.sqrt(precond), Jt * jnp.sqrt(precond), jnp.ones(d)
      J, Jt = J @ Pm, Jt @ Pm
      step_scale = math.sqrt(D / d) if recipe.optimizer == "adam" else 1.0
    jax.block_until_ready((J, Jt))
    setup += time.perf_counter() - t0
    nbytes = (J.size + Jt.size) * 4
    chunk = 64   # large chunks: every step streams the features once per chunk

    def fn(S, scale):
      W = _weights(S, task)
      return np.asarray(batching.chunked_map(
          lambda W_c: replay_params(J, o, y, jnp.asarray(W_c), Jt, ot, yt, step_scale * scale, precond, recipe=recipe, loss=loss,
                                    target_loss=tloss),
          W, chunk_size=chunk))
    return fn, setup, nbytes, (_calibrate_scale if cal else None)

  if parts[0] == "ntk":
    t0 = time.perf_counter()
    opts = parts[1:]
    track = "frozen" not in opts
    groups = "layer" if "layer" in opts else "global"
    slices = parameter_groups(ctx.th.params, groups)
    N, C, D = J.shape
    J2, Jt2 = J.reshape(N * C, D), Jt.reshape(-1, D)
    if recipe.optimizer == "sgd":
      p, qref, rec = jnp.ones(D), jnp.ones(1), recipe
      slices = [slice(0, D)]
    elif recipe.optimizer == "fadam":   # exact: the recipe's own frozen preconditioner, no tracking
      v = _v_ref(ctx, "full", J, o, y, loss)
      p = 1.0 / (jnp.sqrt(v) + recipe.eps)
      slices, qref, track = [slice(0, D)], jnp.ones(1), False
      rec = dataclasses.replace(recipe, optimizer="adam")
    else:
      precond = opts[0]
      v = _v_ref(ctx, "design" if precond == "iso" else precond, J, o, y, loss)
      if precond == "iso":      # one scale for every parameter: plain GD at Adam's first-step size
        v = jnp.full_like(v, jnp.mean(v))
      p = 1.0 / (jnp.sqrt(v) + recipe.eps)
      qref = jnp.stack([jnp.sum(p[sl] * v[sl]) for sl in slices])
      rec = recipe
    coarse = [int(p_[1:]) for p_ in opts if p_.startswith("x") and p_[1:].isdigit()]
    if coarse:   # a coarser time grid: steps / c steps of c times the rate, the EMAs' decays per step ^ c
      cf = coarse[0]
      rec = dataclasses.replace(rec, steps=rec.steps // cf, lr=rec.lr * cf, b1=rec.b1 ** cf, b2=rec.b2 ** cf)
    K, Kt = example_kernels(J2, Jt2, p, slices)
    ranks = [int(p_[1:]) for p_ in opts if p_.startswith("r") and p_[1:].isdigit()]
    if ranks:
      if len(slices) != 1:
        raise ValueError("estimators: a rank cut needs one parameter group")
      s2, U = jnp.linalg.eigh(K[0])
      s2, U = s2[::-1][:ranks[0]], U[:, ::-1][:, :ranks[0]]
      KtU = Kt[0] @ U
      jax.block_until_ready(KtU)
      setup += time.perf_counter() - t0
      nbytes = (U.size + KtU.size) * 4

      def fn_eig(S, scale):
        W = _weights(S, task)
        return np.asarray(batching.chunked_map(
            lambda W_c: replay_eigen(U, s2, KtU, qref[0], o, y, jnp.asarray(W_c), ot, yt, scale, recipe=rec,
                                     loss=loss, target_loss=tloss, track=track),
            W, chunk_size=_NTK_CHUNK.value))
      return fn_eig, setup, nbytes, (_calibrate_scale if cal else None)
    jax.block_until_ready((K, Kt))
    setup += time.perf_counter() - t0
    nbytes = (K.size + Kt.size) * 4

    def fn(S, scale):
      W = _weights(S, task)
      return np.asarray(batching.chunked_map(
          lambda W_c: replay_example(K, Kt, qref, o, y, jnp.asarray(W_c), ot, yt, scale, recipe=rec,
                                     loss=loss, target_loss=tloss, track=track),
          W, chunk_size=_NTK_CHUNK.value))
    return fn, setup, nbytes, (_calibrate_scale if cal else None)

  raise ValueError(f"estimators: unknown estimator {name!r}")


SCALE_GRID = 2.0 ** np.arange(-2.0, 2.01, 0.5)


def _calibrate_scale(fn, S_cal, F_cal):
  errs = {float(a): metrics.relative_error(fn(S_cal, float(a)), F_cal)["median"] for a in SCALE_GRID}
  best = min(errs, key=errs.get)
  if best in (SCALE_GRID[0], SCALE_GRID[-1]):
    warnings.warn(f"step scale {best:g} at the edge of the grid")
  return best


# ----------------------------------------------------------------------------------------------

def _lds(P, T):
  """LDS, or nan where it is undefined (no target varies: e.g. the tiny config's 3 held-out rows)."""
  try:
    return metrics.lds(P, T)
  except metrics.Undefined:
    return float("nan")


def score(name, recipe, c, dsg, F_hat_all, ft, F_base, real_loo, real_lds):
  ncal, nfit, nft = c.finetune.num_calibration, c.finetune.num_fit, c.finetune.num_subsets
  K = dsg.K
  F_ft = ft["F"][:nft]
  S_ft = dsg.S_est[:nft]
  fit, held = np.arange(ncal, ncal + nfit), np.arange(ncal + nfit, nft)
  F_hat, F_truth = F_hat_all[:nft], F_hat_all[nft:]
  loo_ft = ft["F"][nft:nft + K] - ft["F"][nft + K][None]
  err = metrics.relative_error(F_hat[held], F_ft[held])["median"]
  no_change = metrics.relative_error(np.broadcast_to(F_base, F_ft[held].shape), F_ft[held])["median"]
  # 95 % bootstrap intervals over the held-out subsets (the fine-tunes are deterministic: no seed
  # noise to add; the surrogate ratio's denominator, real fine-tunes' surrogate, is the ceiling)
  boot = np.random.default_rng(0).choice(held, (200, len(held)))
  err_ci = np.percentile([metrics.relative_error(F_hat[b], F_ft[b])["median"] for b in boot], [2.5, 97.5])
  lds_ci = np.percentile([_lds(F_hat[b], F_ft[b]) for b in boot], [2.5, 97.5])
  g = ks.fit_kernel(S_ft[fit], F_hat[fit], cv=c.surrogates.cv)
  sur_loo = metrics.loo_correlation(np.asarray(ks.predicted_loo(g)), loo_ft)["pearson"]
  return {
      "estimator": name, "recipe": str(recipe),
      # selection columns: the fit fine-tunes only (never the held-out ones or leave-one-out)
      "fit_rel_error": metrics.relative_error(F_hat[fit], F_ft[fit])["median"],
      "fit_lds": _lds(F_hat[fit], F_ft[fit]),
      "median_rel_error": err, "no_change_error": no_change,
      "ratio_to_no_change": err / no_change, "lds_heldout": _lds(F_hat[held], F_ft[held]),
      "err_ci": f"[{err_ci[0]:.3f}, {err_ci[1]:.3f}]", "lds_ci": f"[{lds_ci[0]:.3f}, {lds_ci[1]:.3f}]",
      "surrogate_ratio": sur_loo / real_loo,
      "surrogate_lds_heldout": _lds(np.asarray(g.predict(S_ft[held])), F_ft[held]),
      "real_surrogate_lds_heldout": real_lds,
      "estimator_loo_pearson": metrics.loo_correlation(F_truth[:K] - F_truth[K][None], loo_ft)["pearson"],
      "first_order_error": float(np.median(ft["linearization_error"][ncal:nft])),
  }


def main(argv):
  del argv
  cache = pathlib.Path(_CACHE.value)
  cache.mkdir(parents=True, exist_ok=True)
  overrides = dict(kv.split("=", 1) for kv in _SET.value)
  c = common.apply_overrides(config_lib.get_config(_CONFIG.value), overrides)
  config_lib.EXPERIMENT.validate(c)
  t0 = time.perf_counter()
  s, dsg, th = build(c, cache)
  acc = float(np.mean(np.argmax(np.asarray(s.apply_fn(th.params, s.X_val)), -1) == s.y_val))
  F_base = np.asarray(s.val_loss(jax.tree.map(lambda a: a[None], th.params)))[0]
  print(f"config {_CONFIG.value} {overrides}: theta0 val acc {acc:.3f}, val loss {F_base.mean():.4f} "
        f"({time.perf_counter() - t0:.1f} s); N = {len(s.d.y_train)}, T = {len(s.y_val)}, "
        f"D = {ravel_pytree(th.params)[0].size}", flush=True)
  nft, ncal, nfit = c.finetune.num_subsets, c.finetune.num_calibration, c.finetune.num_fit
  S_all = np.concatenate([dsg.S_est[:nft], dsg.S_truth])
  rows, feats = [], {}
  for rtext in _RECIPES.value:
    recipe = Recipe.parse(rtext)
    t0 = time.perf_counter()
    ft, t_ft = finetunes(c, s, dsg, th, recipe, cache)
    loo_ft = ft["F"][nft:nft + dsg.K] - ft["F"][nft + dsg.K][None]
    fit, held = np.arange(ncal, ncal + nfit), np.arange(ncal + nfit, nft)
    g_real = ks.fit_kernel(dsg.S_est[fit], ft["F"][fit], cv=c.surrogates.cv)
    real_loo = metrics.loo_correlation(np.asarray(ks.predicted_loo(g_real)), loo_ft)["pearson"]
    real_lds = _lds(np.asarray(g_real.predict(dsg.S_est[held])), ft["F"][held])
    print(f"\nrecipe {recipe}: fine-tunes ready ({time.perf_counter() - t0:.0f} s); {t_ft:.3f} s per fine-tune now "
          f"(stored run: {np.mean(ft['seconds']):.3f}); real-fit surrogate LOO Pearson {real_loo:.3f}, "
          f"held-out LDS {real_lds:.3f}", flush=True)
    ctx = Context(c, s, dsg, th, recipe, feats)
    for name in [e for e in _ESTIMATORS.value if e]:
      path = cache / f"est_{_tag([_built_from(c), str(recipe), name, _NUM_ESTIMATED.value, _PROJ_DIM.value])}.npz"
      if name in _REUSE.value and path.is_file():
        z = np.load(path)
        F_hat, scale, t_est, setup, nbytes = z["F_hat"], float(z["scale"]), float(z["t_est"]), float(z["setup"]), float(z["nbytes"])
        t_ft_row, reused = float(z["t_ft"]), True
      else:
        fn, setup, nbytes, calibrate = make_estimator(ctx, name)
        scale = 1.0
        if calibrate is not None:
          scale = (calibrate(dsg.S_est[:ncal], ft["F"][:ncal]) if calibrate is not _calibrate_scale
                   else _calibrate_scale(fn, dsg.S_est[:ncal], ft["F"][:ncal]))
        # Compile outside the timing, on the shapes the timed call uses (the library's solvers
        # size their chunks by the number of subsets; the replays pad to fixed chunks).
        fn(S_all if name.split(":")[0] in ("onestep", "newton") else S_all[:8], scale)
        t0 = time.perf_counter()
        F_hat = fn(S_all, scale)
        t_est = (time.perf_counter() - t0) / len(S_all)
        if hasattr(fn, "info"):   # the library reports its own split of one-time and per-subset cost
          t_est, setup, nbytes = fn.info["seconds_per_subset"], fn.info["seconds_setup"], fn.info["memory_bytes"]
          scale *= fn.info["step_scale"]   # 1 unless the library calibrated ("+lib")
          name_space = fn.info["space"]
          print(f"{name}: space {name_space}", flush=True)
        t_ft_row, reused = t_ft, False
        np.savez(path, F_hat=F_hat, scale=scale, t_est=t_est, setup=setup, nbytes=nbytes, t_ft=t_ft)
      row = score(name, recipe, c, dsg, F_hat, ft, F_base, real_loo, real_lds)
      share = setup / _NUM_ESTIMATED.value
      row.update({"scale_or_ridge": scale, "s_per_subset": t_est, "featurize_s": setup, "featurize_share_s": share,
                  "finetune_s": t_ft_row, "speedup": t_ft_row / (t_est + share), "memory_mib": nbytes / 2 ** 20,
                  "reused": reused})
      rows.append(row)
      print(report.table([row], list(row)), flush=True)
  if rows:
    print("\n" + report.table(rows, list(rows[0])))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps({"config": overrides, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
  app.run(main)
