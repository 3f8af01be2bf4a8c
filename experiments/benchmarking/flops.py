"""How many FLOPs one generator iteration (or a part of it) does.

Two counts: XLA's cost analysis of the jitted program (`xla_flops`, with a
CPU lowering where the device's backend gives no analysis) and a count of
the matrix products by hand (`analytic_iteration_flops`).
"""

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from gmn_jax import specs
from gmn_jax import critic_updates
from gmn_jax import train_step

FLOP_SOURCES = ("xla", "xla_cpu_lowering", "analytic")


def _analysis_flops(analysis) -> Optional[float]:
  """The "flops" entry of a cost analysis, or None where it gives none."""
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per program.
    analysis = analysis[0] if analysis else None
  flop = (analysis or {}).get("flops")
  if flop is None or not np.isfinite(flop) or flop < 0:
    return None
  return float(flop)


def cpu_abstract_args(args: Sequence[Any]) -> List[Any]:
  """The arguments' shapes and dtypes, placed on a CPU device.

  Args:
    args: pytrees of arrays (other leaves, such as Python numbers, are kept).

  Returns:
    The same pytrees with every array replaced by a `jax.ShapeDtypeStruct`
    committed to the first CPU device.

  Raises:
    RuntimeError: when JAX has no CPU backend (JAX_PLATFORMS without cpu).
  """
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])

  def abstract(leaf):
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
      return leaf
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=cpu)

  return [jax.tree_util.tree_map(abstract, arg) for arg in args]


def xla_flops(jitted, *args) -> Tuple[Optional[float], Optional[str]]:
  """XLA's FLOP count of a jitted program before optimisation, and its source.

  The default backend's analysis of the lowered program comes first
  ("xla"). Backends reached through the PJRT C API (the CUDA plugin, for
  one) give none: `Lowered.cost_analysis` returns None there. The count
  then comes from the same program lowered with its arguments on a CPU
  device ("xla_cpu_lowering"): that is the backend-independent count of
  the unoptimised HLO that "xla" gives on a CPU. (`.trace(...).lower(
  lowering_platforms=("cpu",))` does not do it: the analysis still goes to
  the backend of the devices the arguments are on.)

  Args:
    jitted: a `jax.jit`-wrapped function.
    *args: its arguments (only shapes and dtypes matter).

  Returns:
    (FLOPs, "xla" | "xla_cpu_lowering"), or (None, None) when neither
    analysis gives a count.
  """
  flop = _analysis_flops(jitted.lower(*args).cost_analysis())
  if flop is not None:
    return flop, "xla"
  try:
    flop = _analysis_flops(jitted.lower(*cpu_abstract_args(args)).cost_analysis())
  except RuntimeError:  # No CPU backend in this process.
    flop = None
  return (flop, "xla_cpu_lowering") if flop is not None else (None, None)


def xla_iteration_flops(spec: specs.TrainSpec, state, data, hyper, key) -> Dict[str, Any]:
  """XLA's FLOP count of one generator iteration, critic loop included.

  Args:
    spec: the run's settings.
    state: a `TrainState` (only shapes matter).
    data: the `TrainData`.
    hyper: the `Hyperparameters`.
    key: a PRNG key.

  Returns:
    {"train_iteration": the count of `train_step.train_iteration`, whose
    critic scan body XLA counts once (unless the scan is unrolled,
    `train_step.unroll_critic_steps`); "critic_step": one critic step with
    its draws and fakes (`critic_updates.critic_step`); "critic_update": the
    scan's body (`critic_updates.update_critic`: the iteration generates
    every step's fakes before the scan); "per_iteration": train_iteration +
    (n_critic - 1) critic_update, or train_iteration when unrolled; "source":
    "xla" or "xla_cpu_lowering" (see `xla_flops`)}. Where no analysis gives
    a count, the counts and the source are None.
  """
  iteration = jax.jit(functools.partial(train_step.train_iteration, spec))
  whole, whole_source = xla_flops(iteration, state, data, hyper, key)
  critic = jax.jit(functools.partial(critic_updates.critic_step, spec))
  one_critic, critic_source = xla_flops(critic, hyper, state.critic, state.critic_opt,
                                        state.generator, data, key)
  iterator = state.batch_sampler.critic if spec.sampling == "reference" else None
  # Its shapes: the count needs no values.
  one_batch = jax.eval_shape(lambda d, g, k, i: jax.tree_util.tree_map(
      lambda x: x[0], critic_updates.critic_batches(spec, d, g, k, i)[0]),
                             data, state.generator, key[None], iterator)
  update = jax.jit(functools.partial(critic_updates.update_critic, spec))
  one_update, update_source = xla_flops(update, hyper, state.critic, state.critic_opt, one_batch)
  counts = {"train_iteration": whole, "critic_step": one_critic, "critic_update": one_update}
  if whole is None or one_critic is None or one_update is None:
    return {**counts, "per_iteration": None, "source": None}
  # The weakest of the sources, should the backend count one and not another.
  source = max(whole_source, critic_source, update_source, key=FLOP_SOURCES.index)
  hidden = 0 if train_step.unroll_critic_steps() else (spec.n_critic - 1) * one_update
  return {**counts, "per_iteration": whole + hidden, "source": source}


def iteration_flop_count(counts: Dict[str, Dict[str, Any]]) -> Tuple[float, str]:
  """The FLOPs of one iteration that the fractions use, and where they came from.

  Args:
    counts: {"xla": from `xla_iteration_flops`, "analytic": from
      `analytic_iteration_flops`}.

  Returns:
    (FLOPs, source): XLA's count where there is one, else the analytic one.
  """
  if counts["xla"]["per_iteration"] is not None:
    return counts["xla"]["per_iteration"], counts["xla"]["source"]
  return counts["analytic"]["per_iteration"], "analytic"


def _mlp_macs(widths: Sequence[int]) -> int:
  """Multiply-adds per example of an MLP with these layer widths (in, ..., out)."""
  return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def _gm_classifier_macs(spec: specs.TrainSpec) -> int:
  """Multiply-adds of GM's classifier gradients (all classes and θ samples)."""
  n, r, m = spec.gm_num_classes, spec.gm_real_per_class, spec.num_theta_samples
  fakes = spec.gm_fake_repeat * r
  d, k, s = spec.feature_dim, spec.embedding_dim, spec.num_seen
  bilinear = spec.gm_classifier == "bilinear"
  projection = d * (k if bilinear else s)
  head = k * s if bilinear else 0
  if spec.gm_implementation == "autodiff":
    return m * n * (2 * r + 5 * fakes) * (projection + head)
  outputs = k if bilinear else s
  grams_forward = r * r + r * fakes + fakes * fakes
  grams_backward = r * fakes + fakes * fakes
  per_theta = (r * (projection + 2 * head) + fakes * (2 * projection + 4 * head)
               + outputs * (grams_forward + 2 * grams_backward))
  return n * (d * (grams_forward + grams_backward) + m * per_theta)


def analytic_iteration_flops(spec: specs.TrainSpec) -> Dict[str, float]:
  """Matrix-product FLOPs of one generator iteration, counted by hand.

  A dense layer on B rows costs 2·B·in·out forward, the same again for its
  weight gradient and again for its input gradient. The activations
  (LeakyReLU, ReLU) have piecewise-constant derivatives, so a second-order
  pass only goes back through the products of the first-order one.

  Per critic step (`wgan_gp`'s closed form): the generator forward on B rows
  (no gradient); the critic's first-layer feature block on the stacked real,
  fake and interpolated rows (3B) and its embedding block once (B rows: the
  three share their condition), the upper layers on 3B rows; their backward
  pass on 3B rows; the input gradient (B rows through the feature block);
  the penalty's second-order pass (B rows through the feature block and the
  hidden-to-hidden layers); the weight gradients, one product per kernel on
  3B rows (the embedding block's on B). The generator
  step: the generator forward and backward on B rows (3 ×), the critic
  forward and input gradient (1 × + I); GM: the generator forward and
  backward on the n·f·r fakes (3 ×), and then, as `spec.gm_implementation`
  says:

  * "autodiff": per θ sample the classifier on the n·r real rows (forward +
    weight gradient, 2 ×) and on the fakes (forward, weight gradient, and the
    second-order pass through both, 5 ×);
  * "gram": per class the Gram matrices X_r X_rᵀ, X_r X_sᵀ, X_s X_sᵀ (r or
    f·r rows each side, depth D) and the backward of the two with fakes; per
    θ sample the projection X W on the real rows (1 ×) and on the fakes
    (forward and input gradient, 2 ×), the classifier after the kernel (the
    bilinear K × S product; none for softmax) on the real rows (forward and
    dH, 2 ×) and on the fakes (4 ×: forward, dH, and the second-order pass
    through both), and the quadratic forms of the Gram matrices with dH
    (depth O = K or S; the fake ones also backward, 2 ×).

  Element-wise work, the optimisers and the θ sampler are left out.

  Args:
    spec: the run's settings.

  Returns:
    {"critic_step", "generator_step", "gm", "per_iteration"} in FLOPs.
  """
  k, d, z = spec.embedding_dim, spec.feature_dim, spec.noise_dim
  if spec.generator_kind == "latent_noise":
    generator = 2 * k * z + _mlp_macs((z,) + spec.generator_hidden + (d,))
  else:
    generator = _mlp_macs((z + k,) + spec.generator_hidden + (d,))
  critic_in = d + (k if spec.variant.conditional_critic else 0)
  critic_widths = spec.critic_hidden + (1,)
  critic = _mlp_macs((critic_in,) + critic_widths)
  critic_input_grad = d * critic_widths[0] + _mlp_macs(critic_widths)
  b = spec.batch_size
  features = d * critic_widths[0]
  embedding = (k if spec.variant.conditional_critic else 0) * critic_widths[0]
  upper = _mlp_macs(critic_widths)
  # forward 3·features + embedding + 3·upper; backward 3·upper; input
  # gradient and second order features + (features + inner); weight
  # gradients 3·features + embedding + 3·upper.
  critic_step = 2 * b * (generator + 8 * features + 2 * embedding + 9 * upper
                         + _mlp_macs(spec.critic_hidden))
  generator_step = 2 * b * (3 * generator + critic + critic_input_grad)
  gm = 0.0
  if spec.variant.gradient_matching:
    gm = 2 * (3 * spec.gm_num_classes * spec.gm_fake_repeat * spec.gm_real_per_class
              * generator + _gm_classifier_macs(spec))
  return {"critic_step": float(critic_step), "generator_step": float(generator_step),
          "gm": float(gm),
          "per_iteration": float(spec.n_critic * critic_step + generator_step + gm)}
