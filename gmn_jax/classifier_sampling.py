"""How the classifier parameters θ of gradient matching are drawn.

Gradient matching compares ∇_θ ℓ on real and on generated features for θ
drawn from some distribution over classifier parameters. Two distributions
are offered, both pure functions of (state, key, iteration) so that they run
inside the jitted training scan and resume bit-identically:

* `random_init` (the reference's released setting, `CLF_RESET_ITER=1`): a
  fresh initialisation every generator iteration, shared by that iteration's
  classes. No state.
* `trajectory` (the reference's other code path, `clf_reset_iter = R > 1`):
  θ walks a real-data training trajectory. It is (re-)initialised at every
  iteration that is a multiple of R, used, then takes one SGD step (momentum,
  weight decay, PyTorch's update rule) on a class-balanced real seen batch, so
  the iterations of one cycle see θ after 0, 1, ..., R-1 steps.

Both draw `num_samples` M independent θ per iteration, stacked on a leading
axis, which `losses.gradient_matching` averages over; M = 1 reproduces the
reference. With `trajectory` the M samples are M independent trajectories,
each stepped on its own real batch.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

from gmn_jax import classifiers
from gmn_jax import losses

SAMPLER_KINDS = ("random_init", "trajectory")


class TrajectoryState(NamedTuple):
  """The M classifiers walking their trajectories.

  Attributes:
    params: classifier parameters, every leaf with a leading axis of M.
    momentum: the SGD momentum buffers, same structure as `params`.
  """

  params: Any
  momentum: Any


def random_init(key, init_fn, num_samples, *, feature_dim, embedding_dim, num_classes):
  """Draws `num_samples` independent classifier initialisations.

  Args:
    key: PRNG key.
    init_fn: a classifier init function from `classifiers.get_classifier`.
    num_samples: M, the number of θ to draw (static).
    feature_dim: D.
    embedding_dim: K.
    num_classes: the number of classes the classifier scores.

  Returns:
    A parameter pytree whose leaves have a leading axis of M.
  """
  keys = jax.random.split(key, num_samples)
  return jax.vmap(lambda k: init_fn(
      k, feature_dim=feature_dim, embedding_dim=embedding_dim,
      num_classes=num_classes))(keys)


def sgd_momentum_step(params, momentum, grads, *, lr, momentum_decay, weight_decay):
  """One step of SGD with momentum and L2 weight decay (PyTorch's rule).

  g = grads + weight_decay·θ; m ← momentum_decay·m + g; θ ← θ − lr·m. With m
  starting at zero the first step is plain SGD, as in PyTorch.

  Args:
    params: parameter pytree θ.
    momentum: momentum buffers m, same structure.
    grads: ∇θ of the loss, same structure.
    lr: learning rate.
    momentum_decay: the momentum coefficient (0.9 in the reference).
    weight_decay: the L2 coefficient.

  Returns:
    (new_params, new_momentum).
  """
  new_momentum = jax.tree_util.tree_map(
      lambda m, g, p: momentum_decay * m + g + weight_decay * p, momentum, grads, params)
  new_params = jax.tree_util.tree_map(lambda p, m: p - lr * m, params, new_momentum)
  return new_params, new_momentum


@dataclasses.dataclass(frozen=True)
class ThetaSampler:
  """A θ distribution with static settings; its state lives in the train state.

  Built from a validated config by `TrainSpec.theta_sampler`. Every method
  is pure and jittable.

  Attributes:
    kind: "random_init" or "trajectory".
    init_fn: classifier init function (`classifiers.get_classifier`).
    apply_fn: classifier apply function (`classifiers.get_classifier`).
    num_samples: M, θ per iteration.
    feature_dim: D.
    embedding_dim: K.
    num_classes: the classes the classifier scores (the seen classes).
    reset_every: R, trajectory length in iterations (trajectory only).
    lr: trajectory SGD learning rate (a float or a traced scalar).
    momentum: trajectory SGD momentum.
    weight_decay: trajectory SGD weight decay.
  """

  kind: str
  init_fn: Callable
  apply_fn: Callable
  num_samples: int
  feature_dim: int
  embedding_dim: int
  num_classes: int
  reset_every: int = 1
  lr: Any = 0.01
  momentum: Any = 0.9
  weight_decay: Any = 0.0

  @property
  def needs_real_batches(self) -> bool:
    """Whether `step` consumes real batches (only the trajectory does)."""
    return self.kind == "trajectory"

  def _fresh(self, key):
    return random_init(key, self.init_fn, self.num_samples, feature_dim=self.feature_dim,
                       embedding_dim=self.embedding_dim, num_classes=self.num_classes)

  def init(self, key):
    """The sampler state before iteration 0.

    Args:
      key: PRNG key (only the structure of a draw is used).

    Returns:
      {} for random_init; for trajectory a `TrajectoryState` of zeros (the
      trajectory is initialised at iteration 0, which is a multiple of R, so
      only the structure matters and nothing is drawn).
    """
    if self.kind == "random_init":
      return {}
    shapes = jax.eval_shape(self._fresh, key)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return TrajectoryState(zeros, zeros)

  def sample(self, state, key, iteration):
    """The θ samples for one generator iteration.

    Args:
      state: the sampler state (from `init` or the previous `step`).
      key: this iteration's PRNG key for θ.
      iteration: the 0-based generator iteration (a traced int scalar).

    Returns:
      (thetas, state): thetas with a leading axis of M; the state after a
      re-initialisation when the iteration starts a new trajectory (drawn
      only then: a `lax.cond`, which stays a branch when `iteration` is
      shared by a vmapped group of seeds).
    """
    if self.kind == "random_init":
      return self._fresh(key), state

    def restarted(_):
      fresh = self._fresh(key)
      return TrajectoryState(fresh, jax.tree_util.tree_map(jnp.zeros_like, fresh))

    state = lax.cond(iteration % self.reset_every == 0, restarted, lambda _: state, None)
    return state.params, state

  def step(self, state, features, labels, class_embeddings):
    """Advances every trajectory by one SGD step on its own real batch.

    Args:
      state: the sampler state returned by `sample` this iteration.
      features: (M, B, D) real features, one batch per trajectory.
      labels: (M, B) int indices into the rows of class_embeddings.
      class_embeddings: (C, K) embeddings of the classes scored.

    Returns:
      The new state (unchanged for random_init).
    """
    if self.kind == "random_init":
      return state

    def one(params, momentum, batch_features, batch_labels):
      grads = jax.grad(losses.classifier_loss, argnums=1)(
          self.apply_fn, params, batch_features, batch_labels, class_embeddings)
      return sgd_momentum_step(params, momentum, grads, lr=self.lr,
                               momentum_decay=self.momentum,
                               weight_decay=self.weight_decay)

    params, momentum = jax.vmap(one)(state.params, state.momentum, features, labels)
    return TrajectoryState(params, momentum)
