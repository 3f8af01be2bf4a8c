"""The WGAN-GP critic loss and its parameter gradient in closed form.

`losses.critic_loss` differentiated by `jax.value_and_grad` is the
definition; this module computes the same value and gradient for the
project's critic (`models.Critic`: dense layers with LeakyReLU between them)
by writing the backward passes out. The reason is memory traffic on a GPU,
where a critic step is bound by it (docs/benchmarks.md): autodiff runs the
critic three times (real, fake, interpolates), reads the embedding block
three times, and builds each kernel's gradient as a sum of three products
(the two WGAN terms and the penalty's second-order term), each written to
memory and read back by the sum. Here

* the three batches go through every layer as one stacked product, and the
  embedding block, shared by all three (the condition of real, fake and
  interpolated rows is the same embedding), is applied once;
* the WGAN backward pass and the penalty's input gradient are one pass: the
  seed of the stacked rows is (-w/Σw, +w/Σw, 1) for (real, fake,
  interpolates);
* every kernel's gradient is ONE product over the stacked rows. For layer l
  with input z and output cotangent Δ, the WGAN part is z_rᵀΔ_r + z_fᵀΔ_f;
  the penalty's part is ρᵀε, where ε is the input-gradient pass's cotangent
  at layer l and ρ the penalty's cotangent of the layer below it (the
  second-order pass). Stacking (z_r, z_f, ρ) against (Δ_r, Δ_f, ε) makes
  the sum one contraction.

The LeakyReLU's derivative is piecewise constant, so the penalty reaches the
parameters only through the kernels of the input-gradient pass (not the
biases, and not the embedding block, whose input is held fixed).
`tests/test_wgan_gp.py` checks value and gradient against
`jax.value_and_grad(losses.critic_loss)` for depths 1–3, both critics, masks
and zero-gradient rows.
"""

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from gmn_jax import losses
from gmn_jax import models


def _layers(module: models.Critic, params):
  return [params["layers"][f"layer_{i}"] for i in range(len(module.hidden_dims) + 1)]


def stack_inputs(real, fake, key) -> jax.Array:
  """The critic's three batches stacked: (3, B, D) [real, fake, interpolates].

  The interpolates are `losses.gradient_penalty`'s: e_i real_i + (1 - e_i)
  fake_i with e = `losses.interpolation_weights(key, real)`.

  Args:
    real: (B, D) real features.
    fake: (B, D) generated features.
    key: PRNG key of the interpolation weights.

  Returns:
    The (3, B, D) stack.
  """
  mix = losses.interpolation_weights(key, real)
  return jnp.stack([real, fake, mix * real + (1.0 - mix) * fake])


def critic_loss_and_grads(module: models.Critic, params, inputs, embeddings, *, gp_weight,
                          mask=None) -> Tuple[jax.Array, Dict[str, Any], Any]:
  """`losses.critic_loss` of a `models.Critic`, its aux and its gradient.

  Args:
    module: the critic (its depth, conditioning and compute dtype).
    params: its parameters.
    inputs: (3, B, D) real, fake and interpolated features (`stack_inputs`;
      constants: the fakes' gradient is not taken).
    embeddings: (B, K) class embeddings of all three (conditional critic),
      or None.
    gp_weight: λ.
    mask: optional (B,) row mask or weights shared by the batches (see
      `losses.masked_mean`).

  Returns:
    (loss, {"wasserstein", "gradient_penalty"}, gradient shaped like params),
    what `jax.value_and_grad(losses.critic_loss, has_aux=True)` gives for
    the interpolates' key.
  """
  dtype = module.dtype
  outer = jnp.promote_types(dtype, jnp.float32)

  def product(a, b):
    # In the module's compute dtype, like its layers (flax's Dense), then
    # float32 (float64) for everything around the products. Stacked rows
    # are flattened: a plain matrix product, one launch.
    flat = a.reshape(-1, a.shape[-1]).astype(dtype) @ b.astype(dtype)
    return flat.reshape(a.shape[:-1] + b.shape[-1:]).astype(outer)

  def contract(a, b):
    # Σ over the stacked rows (n, B) of a ⊗ b: one product, K = n·B.
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a.T.astype(dtype) @ b.astype(dtype)).astype(outer)

  layers = _layers(module, params)
  slope = models.LEAKY_RELU_SLOPE
  batch = inputs.shape[1]
  inputs = inputs.astype(outer)

  # Forward: pre-activations h_l of the three stacked batches.
  first = layers[0]
  # The module's own checks of the condition (a clear ConfigError).
  models.conditional_input(inputs[0], embeddings, module.conditional, outer, "critic")
  if module.conditional:
    feature_kernel = first["kernel_features"]
    shared = product(jnp.asarray(embeddings, outer), first["kernel_embedding"])
    pre = product(inputs, feature_kernel) + shared[None] + first["bias"]
  else:
    feature_kernel = first["kernel"]
    pre = product(inputs, feature_kernel) + first["bias"]
  activations, slopes = [inputs], []
  for layer in layers[1:]:
    slopes.append(jnp.where(pre >= 0, 1.0, slope).astype(outer))
    activations.append(pre * slopes[-1])
    pre = product(activations[-1], layer["kernel"]) + layer["bias"]
  scores = pre[..., 0]  # (3, B)

  if mask is None:
    weights = jnp.full((batch,), 1.0 / batch, outer)
  else:
    weights = jnp.asarray(mask).astype(outer)
    total = jnp.sum(weights)
    weights = weights / jnp.where(total != 0, total, 1.0)
  keep = weights != 0
  wasserstein = (jnp.sum(jnp.where(keep, scores[0] * weights, 0.0))
                 - jnp.sum(jnp.where(keep, scores[1] * weights, 0.0)))

  # Backward: one pass for the WGAN rows (seed -w, +w) and the interpolates'
  # input gradient (seed 1); cotangents[l] is that of h_l.
  seed = jnp.stack([jnp.where(keep, -weights, 0.0), jnp.where(keep, weights, 0.0),
                    jnp.ones((batch,), outer)])[..., None]
  cotangents = [seed]
  for layer, layer_slopes in zip(reversed(layers[1:]), reversed(slopes)):
    if cotangents[0].shape[-1] == 1:
      # Below the score: an outer product, elementwise rather than a
      # product with K = 1.
      cotangent = cotangents[0] * layer["kernel"][:, 0].astype(dtype).astype(outer)
    else:
      cotangent = product(cotangents[0], layer["kernel"].T)
    cotangents.insert(0, cotangent * layer_slopes)
  input_grads = product(cotangents[0][2], feature_kernel.T)  # (B, D)

  squares = jnp.sum(jnp.square(input_grads), axis=1)
  norms = losses.safe_sqrt(squares)
  per_row = jnp.square(norms - 1.0)
  penalty = jnp.sum(jnp.where(keep, per_row * weights, 0.0))
  # d(λ·penalty)/d input_grads, 0 on masked rows and at a zero gradient.
  scale = jnp.where(keep & (squares > 0),
                    gp_weight * weights * 2.0 * (norms - 1.0) / jnp.where(squares > 0, norms, 1.0),
                    0.0)
  penalty_cotangent = scale[:, None] * input_grads  # (B, D)

  # Kernel gradients, one product each; the penalty's second-order pass
  # climbs the layers alongside (second[l]: its cotangent of layer l's input
  # gradient pass, below the slopes of that layer).
  grads = []
  second = penalty_cotangent
  for index, layer in enumerate(layers):
    # The interpolates' slot is free by now (one copy, not a new stack).
    rows = activations[index].at[2].set(second)
    kernel_grad = contract(rows, cotangents[index])
    # Real and fake rows paired first: the top layer's -w + w is exactly 0, as
    # in autodiff (Adam turns a rounding residue of a zero gradient into a
    # step of its full learning rate).
    wgan_rows = cotangents[index][0] + cotangents[index][1]
    bias_grad = jnp.sum(wgan_rows, axis=0)
    if index == 0 and module.conditional:
      embedding_grad = product(jnp.asarray(embeddings, outer).T, wgan_rows)
      grads.append({"kernel_features": kernel_grad, "kernel_embedding": embedding_grad,
                    "bias": bias_grad})
    else:
      grads.append({"kernel": kernel_grad, "bias": bias_grad})
    if index + 1 < len(layers):
      kernel = feature_kernel if index == 0 else layer["kernel"]
      second = product(second, kernel) * slopes[index][2]

  loss = -wasserstein + gp_weight * penalty
  grads = {"layers": {f"layer_{i}": jax.tree_util.tree_map(
      lambda g, p: g.astype(p.dtype), grad, layers[i]) for i, grad in enumerate(grads)}}
  aux = {"wasserstein": wasserstein, "gradient_penalty": penalty}
  return loss, aux, grads


def critic_value_and_grad(module: models.Critic, params, real, fake, embeddings, key, *,
                          gp_weight, mask=None) -> Tuple[Tuple[jax.Array, Dict[str, Any]], Any]:
  """`losses.critic_loss`'s value and gradient in `jax.value_and_grad`'s layout.

  Args:
    module: the critic.
    params: its parameters.
    real: (B, D) real features.
    fake: (B, D) generated features (constants).
    embeddings: (B, K) class embeddings, or None for an unconditional critic.
    key: PRNG key of the penalty's interpolation weights.
    gp_weight: λ.
    mask: optional (B,) row mask or weights.

  Returns:
    ((loss, aux), gradient), as `critic_loss_and_grads`.
  """
  loss, aux, grads = critic_loss_and_grads(module, params, stack_inputs(real, fake, key),
                                           embeddings, gp_weight=gp_weight, mask=mask)
  return (loss, aux), grads
