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
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gmn_jax import losses
from gmn_jax.errors import ConfigError

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
    init_fn: a classifier init function from `models.get_classifier`.
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

  Use `make_theta_sampler` to build one. Every method is pure and jittable.

  Attributes:
    kind: "random_init" or "trajectory".
    init_fn: classifier init function (`models.get_classifier`).
    apply_fn: classifier apply function (`models.get_classifier`).
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
      key: PRNG key.

    Returns:
      {} for random_init; a `TrajectoryState` for trajectory (its params are
      replaced at iteration 0 anyway, so only the structure matters).
    """
    if self.kind == "random_init":
      return {}
    params = self._fresh(key)
    return TrajectoryState(params, jax.tree_util.tree_map(jnp.zeros_like, params))

  def sample(self, state, key, iteration):
    """The θ samples for one generator iteration.

    Args:
      state: the sampler state (from `init` or the previous `step`).
      key: this iteration's PRNG key for θ.
      iteration: the 0-based generator iteration (a traced int scalar).

    Returns:
      (thetas, state): thetas with a leading axis of M; the state after a
      re-initialisation when the iteration starts a new trajectory.
    """
    fresh = self._fresh(key)
    if self.kind == "random_init":
      return fresh, state
    restart = (iteration % self.reset_every) == 0
    restarted = TrajectoryState(fresh, jax.tree_util.tree_map(jnp.zeros_like, fresh))
    state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(restart, new, old), restarted, state)
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


def make_theta_sampler(kind, *, init_fn, apply_fn, num_samples, feature_dim, embedding_dim,
                       num_classes, reset_every=1, lr=0.01, momentum=0.9,
                       weight_decay=0.0) -> ThetaSampler:
  """Builds and validates a `ThetaSampler`.

  Args:
    kind: "random_init" or "trajectory".
    init_fn: classifier init function (`models.get_classifier`).
    apply_fn: classifier apply function.
    num_samples: M ≥ 1.
    feature_dim: D.
    embedding_dim: K.
    num_classes: number of classes the classifier scores.
    reset_every: R ≥ 1 (trajectory only; R = 1 is a fresh θ every iteration).
    lr: trajectory SGD learning rate (≥ 0; a float or a traced scalar).
    momentum: trajectory SGD momentum in [0, 1) (float or traced scalar).
    weight_decay: trajectory weight decay (≥ 0; float or traced scalar).

  Returns:
    The sampler.

  Raises:
    ConfigError: for an unknown kind or out-of-range settings.
  """
  if kind not in SAMPLER_KINDS:
    raise ConfigError(f"config.gm.theta_sampling: expected one of {SAMPLER_KINDS}, "
                      f"found {kind!r}")
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ConfigError(f"config.gm.num_theta_samples: expected an int >= 1, found "
                      f"{num_samples!r}")
  if kind == "trajectory":
    if not isinstance(reset_every, int) or reset_every < 1:
      raise ConfigError("config.gm.trajectory_reset_every: expected an int >= 1, found "
                        f"{reset_every!r}")
    # The SGD settings may be traced scalars (hyperparameters passed to a
    # jitted step); only Python numbers can be checked here.
    checks = (("trajectory_lr", lr, lambda v: v >= 0, ">= 0"),
              ("trajectory_momentum", momentum, lambda v: 0 <= v < 1, "a value in [0, 1)"),
              ("trajectory_weight_decay", weight_decay, lambda v: v >= 0, ">= 0"))
    for name, value, valid, expected in checks:
      if isinstance(value, numbers.Real) and not valid(value):
        raise ConfigError(f"config.gm.{name}: expected {expected}, found {value!r}")
  return ThetaSampler(kind=kind, init_fn=init_fn, apply_fn=apply_fn, num_samples=num_samples,
                      feature_dim=feature_dim, embedding_dim=embedding_dim,
                      num_classes=num_classes, reset_every=reset_every, lr=lr,
                      momentum=momentum, weight_decay=weight_decay)
