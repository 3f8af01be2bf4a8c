"""Stage 1's static settings, device-resident data and training state.

Four pieces, all built once per run and passed to the jitted step:

* `TrainSpec`: the static (hashable) settings of one run, read from the
  config, the variant and the dataset's sizes: everything that decides shapes
  or which losses exist. A new spec means a new compilation.
* `Hyperparameters`: the numeric settings (learning rates, Adam betas, loss
  weights, ...) as float32 scalars, passed to the jitted step as an argument,
  so that changing them never recompiles (and they can be vmapped).
* `TrainData`: the training data as a small pytree of arrays that lives on
  the device, in *local* class indices: seen classes are 0..S-1 in the order
  of `dataset.seen_classes`, unseen classes S..S+U-1 (transductive only).
* `TrainState`: a NamedTuple of everything that changes during training
  (generator/critic params and Adam states, the θ-sampler state, the frozen
  L_CLS classifier, the iteration counter). A pure function of the seed.
"""

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gmn_jax import classifier_sampling
from gmn_jax import config as gmn_config
from gmn_jax import gram_gradient_matching
from gmn_jax import losses
from gmn_jax import models
from gmn_jax import precision
from gmn_jax.data import samplers
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError, DataError

GRANULARITIES = losses.GRANULARITIES


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """Static settings of stage 1 (hashable; closed over by the jitted step).

  Attributes:
    variant: the `config.Variant` (which losses, which critic).
    feature_dim: D.
    embedding_dim: K.
    num_seen: S, seen classes.
    num_unseen: U, unseen classes (used by the transductive variant only).
    generator_kind: "latent_noise" | "attribute_concat".
    noise_dim: Z (already resolved: 0 in the config means K).
    generator_hidden: generator hidden widths.
    critic_hidden: critic hidden widths.
    batch_size: critic and adversarial batch size.
    n_critic: critic steps per generator iteration.
    class_balanced: whether the critic's real batch is class-balanced.
    transductive_seen_count: real seen examples per critic batch in the
      transductive variant (the rest are unlabelled unseen); 0 otherwise.
    gm_classifier: "bilinear" | "softmax".
    gm_num_classes: seen classes per iteration.
    gm_real_per_class: real examples per GM class.
    gm_fake_repeat: fake batch = this × the real batch.
    gm_granularity: "row" | "tensor" | "global".
    gm_implementation: "gram" | "autodiff", how L_GM is computed (the same
      loss; see `gmn_jax.gram_gradient_matching`).
    theta_sampling: "random_init" | "trajectory".
    num_theta_samples: M.
    trajectory_reset_every: R.
    cls_classifier: "bilinear" | "softmax" (the frozen L_CLS classifier).
    cls_pretrain_epochs: epochs of the L_CLS classifier's pretraining.
    cls_pretrain_lr: its Adam learning rate.
    precision: "float32" | "bfloat16", the generator's and critic's matrix
      products (see `gmn_jax.precision`).
  """

  variant: gmn_config.Variant
  feature_dim: int
  embedding_dim: int
  num_seen: int
  num_unseen: int
  generator_kind: str
  noise_dim: int
  generator_hidden: Tuple[int, ...]
  critic_hidden: Tuple[int, ...]
  batch_size: int
  n_critic: int
  class_balanced: bool
  transductive_seen_count: int
  gm_classifier: str
  gm_num_classes: int
  gm_real_per_class: int
  gm_fake_repeat: int
  gm_granularity: str
  theta_sampling: str
  num_theta_samples: int
  trajectory_reset_every: int
  cls_classifier: str
  cls_pretrain_epochs: int
  cls_pretrain_lr: float
  precision: str = "float32"
  gm_implementation: str = "gram"

  @property
  def num_generated_classes(self) -> int:
    """Classes the generator's adversarial batch covers: S, or S + U."""
    return self.num_seen + (self.num_unseen if self.variant.transductive else 0)

  def theta_sampler(self, hyper: Optional["Hyperparameters"] = None
                    ) -> classifier_sampling.ThetaSampler:
    """The θ distribution of gradient matching (logits over the S seen classes).

    Args:
      hyper: supplies the trajectory's SGD settings (may be traced); None
        when only `init`/`sample` are needed.

    Returns:
      The sampler.
    """
    init_fn, apply_fn = models.get_classifier(self.gm_classifier)
    sgd = {}
    if hyper is not None:
      sgd = dict(lr=hyper.trajectory_lr, momentum=hyper.trajectory_momentum,
                 weight_decay=hyper.trajectory_weight_decay)
    return classifier_sampling.make_theta_sampler(
        self.theta_sampling, init_fn=init_fn, apply_fn=apply_fn,
        num_samples=self.num_theta_samples, feature_dim=self.feature_dim,
        embedding_dim=self.embedding_dim, num_classes=self.num_seen,
        reset_every=self.trajectory_reset_every, **sgd)


class Hyperparameters(NamedTuple):
  """Numeric settings of stage 1, float32 scalars traced by the jitted step.

  Attributes:
    lr_generator: Adam learning rate of the generator.
    lr_critic: Adam learning rate of the critic.
    adam_b1: Adam β1 (both networks).
    adam_b2: Adam β2 (both networks).
    gp_weight: λ of the gradient penalty.
    gm_weight: β, the L_GM weight.
    cls_weight: c, the L_CLS weight.
    trajectory_lr: SGD learning rate of the θ trajectory.
    trajectory_momentum: its momentum.
    trajectory_weight_decay: its weight decay.
  """

  lr_generator: jax.Array
  lr_critic: jax.Array
  adam_b1: jax.Array
  adam_b2: jax.Array
  gp_weight: jax.Array
  gm_weight: jax.Array
  cls_weight: jax.Array
  trajectory_lr: jax.Array
  trajectory_momentum: jax.Array
  trajectory_weight_decay: jax.Array

  def generator_optimizer(self) -> optax.GradientTransformation:
    """Adam for the generator (its state does not depend on the settings)."""
    return optax.adam(self.lr_generator, b1=self.adam_b1, b2=self.adam_b2)

  def critic_optimizer(self) -> optax.GradientTransformation:
    """Adam for the critic."""
    return optax.adam(self.lr_critic, b1=self.adam_b1, b2=self.adam_b2)


def make_hyperparameters(config: ml_collections.ConfigDict) -> Hyperparameters:
  """Reads and checks the numeric stage-1 settings of a config.

  Args:
    config: the full configuration.

  Returns:
    `Hyperparameters` of float32 numpy scalars.

  Raises:
    ConfigError: for a negative value, or a momentum or Adam β outside [0, 1).
  """
  train, gm = config.train, config.gm
  values = {
      "lr_generator": ("config.train.lr_generator", train.lr_generator),
      "lr_critic": ("config.train.lr_critic", train.lr_critic),
      "adam_b1": ("config.train.adam_b1", train.adam_b1),
      "adam_b2": ("config.train.adam_b2", train.adam_b2),
      "gp_weight": ("config.train.gp_weight", train.gp_weight),
      "gm_weight": ("config.gm.weight", gm.weight),
      "cls_weight": ("config.cls.weight", config.cls.weight),
      "trajectory_lr": ("config.gm.trajectory_lr", gm.trajectory_lr),
      "trajectory_momentum": ("config.gm.trajectory_momentum", gm.trajectory_momentum),
      "trajectory_weight_decay": ("config.gm.trajectory_weight_decay",
                                  gm.trajectory_weight_decay),
  }
  checked = {name: _non_negative(path, value) for name, (path, value) in values.items()}
  for name in ("adam_b1", "adam_b2", "trajectory_momentum"):
    if not checked[name] < 1:
      raise ConfigError(f"{values[name][0]}: expected a number in [0, 1), found "
                        f"{values[name][1]!r}")
  return Hyperparameters(**{name: np.float32(v) for name, v in checked.items()})


def _positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ConfigError(f"{name}: expected a positive int, found {value!r}")
  return int(value)


def _non_negative(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
    raise ConfigError(f"{name}: expected a non-negative number, found {value!r}")
  return float(value)


def _one_of(name, value, choices):
  if value not in choices:
    raise ConfigError(f"{name}: expected one of {tuple(choices)}, found {value!r}")
  return value


def make_train_spec(config: ml_collections.ConfigDict, dataset: ZSLDataset) -> TrainSpec:
  """Reads and checks stage 1's settings from a config and the dataset's sizes.

  Args:
    config: the full configuration.
    dataset: the loaded dataset (only its sizes are read).

  Returns:
    The `TrainSpec`.

  Raises:
    ConfigError: for an unknown method, an invalid value, or settings the
      dataset cannot satisfy (e.g. more GM classes than seen classes, a
      conditional critic in the transductive variant).
  """
  variant = gmn_config.get_variant(config)
  num_seen = int(dataset.seen_classes.shape[0])
  num_unseen = int(dataset.unseen_classes.shape[0])
  k = dataset.embedding_dim
  train, gm, cls = config.train, config.gm, config.cls
  noise_dim = int(config.generator.noise_dim)
  if noise_dim < 0:
    raise ConfigError(f"config.generator.noise_dim: expected >= 0 (0 means the embedding "
                      f"size), found {noise_dim}")
  batch_size = _positive_int("config.train.batch_size", train.batch_size)
  gm_num_classes = _positive_int("config.gm.num_classes", gm.num_classes)
  if variant.gradient_matching and gm_num_classes > num_seen:
    raise ConfigError(f"config.gm.num_classes: expected at most the {num_seen} seen classes, "
                      f"found {gm_num_classes}")
  transductive_seen_count = 0
  if variant.transductive:
    if variant.conditional_critic:
      raise ConfigError("config.critic.conditional: expected None or False for the "
                        f"transductive method {variant.name!r} (unlabelled unseen features "
                        "have no class to condition on), found True")
    if dataset.test_unseen_features.shape[0] == 0:
      raise DataError(dataset.name, "test_unseen_features",
                      "unlabelled unseen features for the transductive variant", "none")
    if batch_size < 2:
      raise ConfigError("config.train.batch_size: expected >= 2 for the transductive variant "
                        f"(seen and unseen examples in every batch), found {batch_size}")
    # The critic's real batch holds seen and unseen examples in the
    # proportion S:U of class counts, at least one of each.
    transductive_seen_count = int(round(batch_size * num_seen / (num_seen + num_unseen)))
    transductive_seen_count = min(max(transductive_seen_count, 1), batch_size - 1)
  return TrainSpec(
      variant=variant,
      feature_dim=dataset.feature_dim,
      embedding_dim=k,
      num_seen=num_seen,
      num_unseen=num_unseen,
      generator_kind=_one_of("config.generator.kind", config.generator.kind,
                             models.GENERATOR_KINDS),
      noise_dim=noise_dim or k,
      generator_hidden=tuple(int(w) for w in config.generator.hidden_dims),
      critic_hidden=tuple(int(w) for w in config.critic.hidden_dims),
      batch_size=batch_size,
      n_critic=_positive_int("config.train.n_critic", train.n_critic),
      class_balanced=bool(train.class_balanced),
      transductive_seen_count=transductive_seen_count,
      gm_classifier=_one_of("config.gm.classifier", gm.classifier, models.CLASSIFIER_KINDS),
      gm_num_classes=gm_num_classes,
      gm_real_per_class=_positive_int("config.gm.real_per_class", gm.real_per_class),
      gm_fake_repeat=_positive_int("config.gm.fake_repeat", gm.fake_repeat),
      gm_granularity=_one_of("config.gm.granularity", gm.granularity, GRANULARITIES),
      theta_sampling=_one_of("config.gm.theta_sampling", gm.theta_sampling,
                             classifier_sampling.SAMPLER_KINDS),
      num_theta_samples=_positive_int("config.gm.num_theta_samples", gm.num_theta_samples),
      trajectory_reset_every=_positive_int("config.gm.trajectory_reset_every",
                                           gm.trajectory_reset_every),
      cls_classifier=_one_of("config.cls.classifier", cls.classifier, models.CLASSIFIER_KINDS),
      cls_pretrain_epochs=_positive_int("config.cls.pretrain_epochs", cls.pretrain_epochs),
      cls_pretrain_lr=_non_negative("config.cls.pretrain_lr", cls.pretrain_lr),
      precision=_one_of("config.precision", config.precision, precision.PRECISIONS),
      gm_implementation=_one_of("config.gm.implementation", gm.implementation,
                                gram_gradient_matching.IMPLEMENTATIONS),
  )


class TrainData(NamedTuple):
  """Stage 1's data on the device, in local class indices.

  Attributes:
    features: (N, D) float32 real seen training features.
    labels: (N,) int32 local seen class of each (0..S-1).
    class_index: `samplers.ClassIndex` over the local seen classes.
    seen_embeddings: (S, K) embeddings of the seen classes.
    unseen_embeddings: (U, K) embeddings of the unseen classes.
    unlabelled_features: (N_u, D) unlabelled unseen test features for the
      transductive variant; (0, D) otherwise (never read then).
  """

  features: jax.Array
  labels: jax.Array
  class_index: samplers.ClassIndex
  seen_embeddings: jax.Array
  unseen_embeddings: jax.Array
  unlabelled_features: jax.Array


def make_train_data(dataset: ZSLDataset, spec: TrainSpec) -> TrainData:
  """Builds the device pytree of stage 1 from a dataset (host side, once).

  Args:
    dataset: the loaded dataset.
    spec: the run's settings (decides whether unseen test features are kept).

  Returns:
    A `TrainData` of numpy arrays (`jax.device_put` it, or pass it to jit).
  """
  seen = np.asarray(dataset.seen_classes)
  local = np.searchsorted(seen, dataset.train_labels).astype(np.int32)
  embeddings = np.asarray(dataset.class_embeddings, np.float32)
  if spec.variant.transductive:
    unlabelled = np.asarray(dataset.test_unseen_features, np.float32)
  else:
    unlabelled = np.zeros((0, dataset.feature_dim), np.float32)
  return TrainData(
      features=np.asarray(dataset.train_features, np.float32),
      labels=local,
      class_index=samplers.build_class_index(local, np.arange(seen.size)),
      seen_embeddings=embeddings[seen],
      unseen_embeddings=embeddings[np.asarray(dataset.unseen_classes)],
      unlabelled_features=unlabelled,
  )


class TrainState(NamedTuple):
  """Everything stage 1 changes, plus the frozen L_CLS classifier.

  Attributes:
    iteration: int32 scalar, generator iterations done so far.
    generator: generator params.
    critic: critic params.
    generator_opt: the generator's Adam state.
    critic_opt: the critic's Adam state.
    theta_sampler: the θ sampler's state (an empty dict for random_init).
    cls_classifier: the frozen, pretrained seen-class classifier of L_CLS (an
      empty dict when the variant has no L_CLS).
  """

  iteration: jax.Array
  generator: Any
  critic: Any
  generator_opt: Any
  critic_opt: Any
  theta_sampler: Any
  cls_classifier: Any


@functools.partial(jax.jit, static_argnums=0)
def _pretrain(spec: TrainSpec, key, features, labels, seen_embeddings):
  init_fn, apply_fn = models.get_classifier(spec.cls_classifier)
  n = features.shape[0]
  batch_size = min(spec.batch_size, n)
  init_key, shuffle_key = jax.random.split(key)
  params = init_fn(init_key, feature_dim=spec.feature_dim, embedding_dim=spec.embedding_dim,
                   num_classes=spec.num_seen)
  optimizer = optax.adam(spec.cls_pretrain_lr)

  def step(carry, indices):
    p, opt_state = carry
    grads = jax.grad(losses.classifier_loss, argnums=1)(
        apply_fn, p, features[indices], labels[indices], seen_embeddings)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  def epoch(carry, epoch_key):
    batches = samplers.epoch_batches(epoch_key, n, batch_size, drop_remainder=True)
    return lax.scan(step, carry, batches.indices)[0], None

  keys = jax.random.split(shuffle_key, spec.cls_pretrain_epochs)
  return lax.scan(epoch, (params, optimizer.init(params)), keys)[0][0]


def pretrain_seen_classifier(key, spec: TrainSpec, data: TrainData):
  """Trains the frozen L_CLS classifier on real seen train features.

  Adam (lr `cls_pretrain_lr`) for `cls_pretrain_epochs` epochs of shuffled
  batches of `batch_size` (the last, incomplete batch dropped), cross-entropy
  with logits over the seen classes. This plays the role of the reference's
  separately pretrained checkpoint (`--pretrained_clf_ckpt`).

  Args:
    key: PRNG key (init and shuffling).
    spec: the run's settings.
    data: the training data.

  Returns:
    The classifier params.
  """
  return _pretrain(spec, key, data.features, data.labels, data.seen_embeddings)


@functools.partial(jax.jit, static_argnums=0)
def _init_networks(spec: TrainSpec, key):
  """Generator, critic, their Adam states and the θ-sampler state (one program)."""
  gen_key, critic_key, theta_key = jax.random.split(key, 3)
  generator = models.init_generator(
      gen_key, kind=spec.generator_kind, embedding_dim=spec.embedding_dim,
      feature_dim=spec.feature_dim, noise_dim=spec.noise_dim, hidden_dims=spec.generator_hidden)
  critic = models.init_critic(
      critic_key, feature_dim=spec.feature_dim,
      embedding_dim=spec.embedding_dim if spec.variant.conditional_critic else 0,
      hidden_dims=spec.critic_hidden)
  theta_state = spec.theta_sampler().init(theta_key) if spec.variant.gradient_matching else {}
  # Adam's state does not depend on its settings, which come later as
  # (traced) `Hyperparameters`.
  adam = optax.adam(1.0)
  return generator, critic, adam.init(generator), adam.init(critic), theta_state


def init_train_state(key, spec: TrainSpec, data: Optional[TrainData] = None) -> TrainState:
  """The state before iteration 0 (a pure function of key).

  Args:
    key: PRNG key of this generator seed's initialisation.
    spec: the run's settings.
    data: the training data; needed only when the variant has L_CLS (its
      classifier is pretrained here).

  Returns:
    The initial `TrainState`.

  Raises:
    ConfigError: when the variant needs `data` and none is given.
  """
  network_key, cls_key = jax.random.split(key)
  generator, critic, generator_opt, critic_opt, theta_state = _init_networks(spec, network_key)
  cls_classifier = {}
  if spec.variant.classification_loss:
    if data is None:
      raise ConfigError(f"method {spec.variant.name!r}: the L_CLS classifier is pretrained "
                        "on the training data, but init_train_state got none")
    cls_classifier = pretrain_seen_classifier(cls_key, spec, data)
  return TrainState(
      iteration=jnp.zeros((), jnp.int32),
      generator=generator,
      critic=critic,
      generator_opt=generator_opt,
      critic_opt=critic_opt,
      theta_sampler=theta_state,
      cls_classifier=cls_classifier,
  )
