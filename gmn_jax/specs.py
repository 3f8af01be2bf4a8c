"""Typed, frozen views of a validated config: what each stage is told.

`gmn_jax.config.validate` checks every field of a config once, at the edge
(the binaries, `train.train_and_evaluate`). The builders here read such a
config and never check it again; they only check what needs the dataset's
sizes (e.g. more GM classes per iteration than the dataset has seen
classes), which no config schema can know. Below them, every stage receives
these specs and trusts them:

* `TrainSpec`: stage 1's static (hashable) settings: everything that decides
  shapes or which losses exist. A new spec means a new compilation.
* `Hyperparameters`: stage 1's numeric settings as float32 scalars, passed to
  the jitted step as an argument, so changing them never recompiles (and they
  can be vmapped).
* `EvalSpec`: stage 2's settings (synthesis counts and the final classifier).
* `Schedule`: how stage 1's iterations are cut into host calls, checkpoints
  and metric windows.
"""

import dataclasses
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import jax
import ml_collections
import numpy as np
import optax

from gmn_jax import classifier_sampling
from gmn_jax import classifiers
from gmn_jax import config as gmn_config
from gmn_jax import models
from gmn_jax import optimizers
from gmn_jax import vae
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError, DataError


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
    theta_sampling: "random_init" | "trajectory".
    num_theta_samples: M.
    trajectory_reset_every: R.
    cls_classifier: "bilinear" | "softmax" (the frozen L_CLS classifier;
      the method's own where it prescribes one, `Variant.cls_classifier`).
    cls_pretrain_epochs: epochs of the L_CLS classifier's pretraining.
    cls_pretrain_lr: its Adam learning rate.
    regressor_pretrain_epochs: epochs of the L_REG regressor's pretraining.
    regressor_pretrain_batch_size: its mini-batch size.
    regressor_pretrain_lr: its Adam learning rate.
    mmd_bandwidths: the Gaussian kernels' sigmas of the gmmn objective, in
      feature units (`mmd.bandwidths` times the training features' RMS
      distance to their mean).
    mmd_num_classes: seen classes per iteration of the MMD (resolved: 0 in
      the config means every seen class).
    mmd_real_per_class: real examples per MMD class.
    mmd_fake_per_class: generated examples per MMD class.
    encoder_hidden: the cvae encoder's hidden widths.
    precision: "float32" | "bfloat16", the compute dtype of the generator's
      and critic's matrix products (`models.PRECISIONS`; parameters, losses
      and gradient matching stay float32).
    gm_implementation: "gram" | "autodiff", how L_GM is computed (the same
      loss; see `gmn_jax.gram_gradient_matching`).
    sampling: "iid" | "reference" (`config.SAMPLING_MODES`): fixed-size
      independent draws, or the reference code's epoch iterators with padded
      short batches and masked losses (`gmn_jax.reference_batches`).
    adam_first_moment: False when `train.adam_b1` is 0 (the reference's
      setting): Adam's first moment is then the gradient, and
      `optimizers.adam` leaves its buffer unread (the same numbers, less
      memory traffic).
    adam_moment_dtype: "float32" | "bfloat16" (`train.adam_moments_dtype`),
      the dtype Adam's moments are stored in.
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
  regressor_pretrain_epochs: int = 40
  regressor_pretrain_batch_size: int = 64
  regressor_pretrain_lr: float = 1e-4
  mmd_bandwidths: Tuple[float, ...] = ()
  mmd_num_classes: int = 0
  mmd_real_per_class: int = 0
  mmd_fake_per_class: int = 0
  encoder_hidden: Tuple[int, ...] = ()
  precision: str = "float32"
  gm_implementation: str = "gram"
  sampling: str = "iid"
  adam_first_moment: bool = True
  adam_moment_dtype: str = "float32"

  @property
  def adam_options(self) -> Dict[str, Any]:
    """The keyword arguments of `optimizers.adam` for both networks."""
    return dict(first_moment=self.adam_first_moment, moment_dtype=self.adam_moment_dtype)

  @property
  def generator(self) -> models.Generator:
    """The generator module (its compute dtype from `precision`)."""
    return models.Generator(self.generator_kind, self.embedding_dim, self.feature_dim,
                            self.noise_dim, self.generator_hidden,
                            models.PRECISIONS[self.precision])

  @property
  def critic(self) -> models.Critic:
    """The critic module: conditional or not as the variant says."""
    return models.Critic(self.feature_dim, self.embedding_dim, self.critic_hidden,
                         self.variant.conditional_critic, models.PRECISIONS[self.precision])

  @property
  def encoder(self) -> vae.Encoder:
    """The cvae objective's encoder q(z | x, a) (its latent is the generator's noise)."""
    return vae.Encoder(self.feature_dim, self.embedding_dim, self.noise_dim,
                       self.encoder_hidden, conditional=True,
                       dtype=models.PRECISIONS[self.precision])

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
    init_fn, apply_fn = classifiers.get_classifier(self.gm_classifier)
    sgd = {}
    if hyper is not None:
      sgd = dict(lr=hyper.trajectory_lr, momentum=hyper.trajectory_momentum,
                 weight_decay=hyper.trajectory_weight_decay)
    return classifier_sampling.ThetaSampler(
        kind=self.theta_sampling, init_fn=init_fn, apply_fn=apply_fn,
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
    regression_weight: R, the L_REG weight.
    kl_weight: the cvae objective's weight of the KL divergence.
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
  regression_weight: jax.Array
  kl_weight: jax.Array
  trajectory_lr: jax.Array
  trajectory_momentum: jax.Array
  trajectory_weight_decay: jax.Array

  def generator_optimizer(self, **options) -> optax.GradientTransformation:
    """Adam for the generator (its state does not depend on the settings).

    Args:
      **options: `TrainSpec.adam_options`.

    Returns:
      `optimizers.adam` with this learning rate and these β.
    """
    return optimizers.adam(self.lr_generator, self.adam_b1, self.adam_b2, **options)

  def critic_optimizer(self, **options) -> optax.GradientTransformation:
    """Adam for the critic (`generator_optimizer`'s options)."""
    return optimizers.adam(self.lr_critic, self.adam_b1, self.adam_b2, **options)


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Stage 2's settings: the synthetic set and the final classifier.

  Attributes:
    classifier: one of `final_classifier.FINAL_CLASSIFIER_KINDS`.
    epochs: passes over the pooled training set.
    batch_size: mini-batch size; the last batch of an epoch is smaller.
    lr: initial learning rate.
    lr_decay: multiplies the learning rate after every epoch.
    weight_decay: L2 coefficient added to the gradient (PyTorch style).
    momentum: heavy-ball momentum (PyTorch style, no dampening).
    n_synth_unseen: synthetic features per unseen class.
    n_synth_seen: seen classes are topped up to this many samples.
    num_classifier_seeds: final classifiers trained per generator.
    margin: the hinge margin of the `devise` ranking loss (read by no other
      classifier).
  """

  classifier: str
  epochs: int
  batch_size: int
  lr: float
  lr_decay: float
  weight_decay: float
  momentum: float
  n_synth_unseen: int
  n_synth_seen: int
  num_classifier_seeds: int
  margin: float = 1.0

  def program_key(self) -> "EvalSpec":
    """This spec with its traced fields (`EVAL_TRACED_FIELDS`) blanked.

    Returns:
      A spec equal to another's key exactly when the two train their final
      classifiers as one program.
    """
    return dataclasses.replace(self, **{name: 0.0 for name in EVAL_TRACED_FIELDS})


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How stage 1's iterations are cut into host calls.

  Attributes:
    num_iterations: total generator iterations.
    iterations_per_call: the most iterations per jitted call.
    checkpoint_every: checkpoint period in iterations (and at the end).
    log_every: metrics window in iterations.
  """

  num_iterations: int
  iterations_per_call: int
  checkpoint_every: int
  log_every: int


# The config fields that are stage 1's traced settings, by `Hyperparameters`
# field: changing them never recompiles, and runs that differ only in them
# train as one vmapped program (`stage1.train_generators`, `gmn_jax.sweep`).
HYPERPARAMETER_FIELDS = {
    "train.lr_generator": "lr_generator", "train.lr_critic": "lr_critic",
    "train.adam_b1": "adam_b1", "train.adam_b2": "adam_b2", "train.gp_weight": "gp_weight",
    "gm.weight": "gm_weight", "cls.weight": "cls_weight",
    "regressor.weight": "regression_weight", "cvae.kl_weight": "kl_weight",
    "gm.trajectory_lr": "trajectory_lr",
    "gm.trajectory_momentum": "trajectory_momentum",
    "gm.trajectory_weight_decay": "trajectory_weight_decay",
}
# The `EvalSpec` fields that the final classifiers' program takes as traced
# arguments (one value per pooled training set); the others decide shapes.
EVAL_TRACED_FIELDS = ("lr", "lr_decay", "weight_decay", "momentum", "margin")


def eval_specs_per_set(spec, num_sets: int) -> List[EvalSpec]:
  """One `EvalSpec` per pooled training set, checked to share one program.

  Args:
    spec: one `EvalSpec` for every set, or a sequence of one per set.
    num_sets: G, the number of sets.

  Returns:
    G specs that differ at most in `EVAL_TRACED_FIELDS`.

  Raises:
    ConfigError: when the specs are not one per set, or differ in a field
      that decides the program's shapes (anything but `EVAL_TRACED_FIELDS`).
  """
  per_set = [spec] * num_sets if isinstance(spec, EvalSpec) else list(spec)
  if len(per_set) != num_sets:
    raise ConfigError(f"spec: expected one EvalSpec per generator ({num_sets}), "
                      f"found {len(per_set)}")
  first = per_set[0].program_key()
  for other in per_set[1:]:
    key = other.program_key()
    if key != first:
      differing = sorted(f.name for f in dataclasses.fields(EvalSpec)
                         if getattr(key, f.name) != getattr(first, f.name))
      raise ConfigError(f"spec: the generators' EvalSpecs may differ only in "
                        f"{', '.join(EVAL_TRACED_FIELDS)}; found differing {differing}")
  return per_set


def hyperparameters(config: ml_collections.ConfigDict) -> Hyperparameters:
  """Stage 1's numeric settings of a validated config.

  Args:
    config: the full, validated configuration.

  Returns:
    `Hyperparameters` of float32 numpy scalars.
  """
  values = {}
  for path, name in HYPERPARAMETER_FIELDS.items():
    section, field = path.split(".")
    values[name] = np.float32(config[section][field])
  return Hyperparameters(**values)


def eval_spec(config: ml_collections.ConfigDict) -> EvalSpec:
  """Stage 2's settings of a validated config.

  Args:
    config: the full, validated configuration (its `eval` fields are read).

  Returns:
    The `EvalSpec`.
  """
  fields = {f.name for f in dataclasses.fields(EvalSpec)}
  spec = EvalSpec(**{name: config.eval[name] for name in fields})
  if gmn_config.get_variant(config).uses_generator:
    return spec
  # real_only: a compatibility model, the only kind that can score the unseen
  # classes it was never trained on, whatever the generator rows use.
  baseline = config.eval.real_only
  return dataclasses.replace(spec, classifier=baseline.classifier, **{
      name: baseline[name] for name in ("lr", "lr_decay", "weight_decay")
      if baseline[name] is not None})


def schedule(config: ml_collections.ConfigDict) -> Schedule:
  """Stage 1's schedule of a validated config.

  Args:
    config: the full, validated configuration.

  Returns:
    The `Schedule`.
  """
  train = config.train
  return Schedule(num_iterations=train.num_iterations,
                  iterations_per_call=train.iterations_per_call,
                  checkpoint_every=train.checkpoint_every, log_every=train.log_every)


def feature_scale(dataset: ZSLDataset) -> float:
  """The training features' RMS distance to their mean (the unit of `mmd.bandwidths`).

  Args:
    dataset: the loaded dataset.

  Returns:
    sqrt(mean over examples of ||x - mean x||²), at least 1e-6.
  """
  features = np.asarray(dataset.train_features, np.float64)
  centred = features - features.mean(axis=0)
  return float(max(np.sqrt(np.mean(np.sum(centred ** 2, axis=1))), 1e-6))


def train_spec(config: ml_collections.ConfigDict, dataset: ZSLDataset) -> TrainSpec:
  """Stage 1's static settings of a validated config on a dataset.

  Args:
    config: the full, validated configuration (a method with a generator).
    dataset: the loaded dataset (only its sizes are read).

  Returns:
    The `TrainSpec`.

  Raises:
    ConfigError: when the dataset cannot satisfy the settings (more GM
      classes per iteration than it has seen classes).
    DataError: for the transductive variant on a dataset without unlabelled
      unseen features.
  """
  variant = gmn_config.get_variant(config)
  num_seen = int(dataset.seen_classes.shape[0])
  num_unseen = int(dataset.unseen_classes.shape[0])
  k = dataset.embedding_dim
  train, gm, cls = config.train, config.gm, config.cls
  # 0 means every seen class, on any split (a validation split has fewer).
  gm_num_classes = gm.num_classes or num_seen
  if variant.gradient_matching and gm_num_classes > num_seen:
    raise ConfigError(f"config.gm.num_classes: expected at most the {num_seen} seen classes, "
                      f"found {gm.num_classes}")
  mmd_num_classes = config.mmd.num_classes or num_seen
  if variant.objective == "mmd" and mmd_num_classes > num_seen:
    raise ConfigError(f"config.mmd.num_classes: expected at most the {num_seen} seen classes, "
                      f"found {config.mmd.num_classes}")
  transductive_seen_count = 0
  if variant.transductive:
    if dataset.test_unseen_features.shape[0] == 0:
      raise DataError(dataset.name, "test_unseen_features",
                      "unlabelled unseen features for the transductive variant", "none")
    # The critic's real batch holds seen and unseen examples in the
    # proportion S:U of class counts, at least one of each.
    transductive_seen_count = int(round(train.batch_size * num_seen / (num_seen + num_unseen)))
    transductive_seen_count = min(max(transductive_seen_count, 1), train.batch_size - 1)
  return TrainSpec(
      variant=variant,
      feature_dim=dataset.feature_dim,
      embedding_dim=k,
      num_seen=num_seen,
      num_unseen=num_unseen,
      generator_kind=config.generator.kind,
      noise_dim=config.generator.noise_dim or k,
      generator_hidden=tuple(config.generator.hidden_dims),
      critic_hidden=tuple(config.critic.hidden_dims),
      batch_size=train.batch_size,
      n_critic=train.n_critic,
      class_balanced=train.class_balanced,
      transductive_seen_count=transductive_seen_count,
      gm_classifier=gm.classifier,
      gm_num_classes=gm_num_classes,
      gm_real_per_class=gm.real_per_class,
      gm_fake_repeat=gm.fake_repeat,
      gm_granularity=gm.granularity,
      theta_sampling=gm.theta_sampling,
      num_theta_samples=gm.num_theta_samples,
      trajectory_reset_every=gm.trajectory_reset_every,
      cls_classifier=variant.cls_classifier or cls.classifier,
      cls_pretrain_epochs=cls.pretrain_epochs,
      cls_pretrain_lr=float(cls.pretrain_lr),
      regressor_pretrain_epochs=config.regressor.pretrain_epochs,
      regressor_pretrain_batch_size=config.regressor.pretrain_batch_size,
      regressor_pretrain_lr=float(config.regressor.pretrain_lr),
      mmd_bandwidths=tuple(float(b) * feature_scale(dataset) for b in config.mmd.bandwidths)
      if variant.objective == "mmd" else (),
      mmd_num_classes=mmd_num_classes,
      mmd_real_per_class=config.mmd.real_per_class,
      mmd_fake_per_class=config.mmd.fake_per_class,
      encoder_hidden=tuple(config.cvae.encoder_hidden_dims),
      precision=config.precision,
      gm_implementation=gm.implementation,
      sampling=train.sampling,
      adam_first_moment=float(train.adam_b1) != 0.0,
      adam_moment_dtype=train.adam_moments_dtype,
  )
