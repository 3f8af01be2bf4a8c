"""The configuration schema: every field, its default and the training variants.

Per-dataset presets under `experiments/configs/` start from `get_base_config()`
and change what the reference's scripts change; every field can be overridden
on the command line (`--config.gm.weight=50`). Defaults equal the reference
code's CUB configuration (see docs/configuration.md for each field's meaning).
"""

import dataclasses
import os
from typing import List, Optional

import ml_collections
from ml_collections import config_dict

from gmn_jax import config_utils
from gmn_jax import errors


# What trains a generator: a WGAN-GP critic, a per-class maximum mean
# discrepancy (no critic), or a conditional VAE's evidence bound (its encoder
# takes the critic's place in the training state).
OBJECTIVES = ("wgan", "mmd", "cvae")

# How stage 1 draws its batches (config field train.sampling): independent
# fixed-size draws, or the reference code's epoch iterators with their short
# remainder batches (`gmn_jax.reference_batches`).
SAMPLING_MODES = ("iid", "reference")


@dataclasses.dataclass(frozen=True)
class Variant:
  """What a training method switches on.

  Attributes:
    name: the method name used on the command line and in results.
    uses_generator: False only for `real_only` (a compatibility classifier on
      real seen features alone, `eval.real_only`).
    conditional_critic: whether the critic sees [x, a] (cWGAN) or x (WGAN).
    gradient_matching: whether the generator loss has the β·L_GM term.
    classification_loss: whether the generator loss has the c·L_CLS term
      (a seen-class classifier pretrained and frozen).
    transductive: whether the critic also sees unlabelled unseen test
      features and the generator produces seen and unseen classes.
    paper_row: the row label in the paper's tables.
    objective: one of `OBJECTIVES`, what trains the generator besides the
      terms above ("wgan": the critic's adversarial loss).
    regression_loss: whether the generator loss has the R·L_REG term: the
      squared error of a frozen, pretrained linear regressor from generated
      features back to their class embedding (cycle-WGAN; SE-GZSL's
      feedback).
    cls_classifier: the frozen L_CLS classifier the method prescribes
      ("softmax" for f-CLSWGAN), or None for `cls.classifier`.
  """

  name: str
  uses_generator: bool
  conditional_critic: bool
  gradient_matching: bool
  classification_loss: bool
  transductive: bool
  paper_row: str
  objective: str = "wgan"
  regression_loss: bool = False
  cls_classifier: Optional[str] = None

  @property
  def has_critic(self) -> bool:
    """Whether stage 1 trains a WGAN-GP critic (n_critic steps per iteration)."""
    return self.objective == "wgan"


VARIANTS = {
    v.name: v for v in (
        Variant("real_only", False, False, False, False, False, "real only"),
        Variant("wgan_cls", True, False, False, True, False, "WGAN^S + CLS"),
        Variant("cwgan", True, True, False, False, False, "cWGAN^S"),
        Variant("wgan_gm", True, False, True, False, False, "WGAN^S + GM"),
        Variant("cwgan_gm", True, True, True, False, False,
                "cWGAN^S + GM (GMN)"),
        Variant("wgan_su_gm", True, False, True, False, True,
                "WGAN^{S+U} + GM"),
        Variant("cwgan_cls", True, True, False, True, False,
                "cWGAN^S + CLS (the reference repository's f-CLSWGAN variant)"),
        # Table 2's generators (docs/generators.md).
        Variant("fclswgan", True, True, False, True, False,
                "f-CLSWGAN (Xian et al. '18)", cls_classifier="softmax"),
        Variant("cyclewgan", True, True, False, False, False,
                "cycle-WGAN (Felix et al. '18)", regression_loss=True),
        Variant("cycle_clswgan", True, True, False, True, False,
                "cycle-CLSWGAN (Felix et al. '18)", regression_loss=True,
                cls_classifier="softmax"),
        Variant("gmmn", True, False, False, False, False,
                "GMMN (Bucher et al. '17)", objective="mmd"),
        Variant("cvae", True, False, False, False, False,
                "CVAE + regressor (Verma et al. '18)", objective="cvae",
                regression_loss=True),
    )
}

# The six rows of the paper's ablation table, in its order.
ABLATION_METHODS = ("real_only", "wgan_cls", "cwgan", "wgan_gm", "cwgan_gm",
                    "wgan_su_gm")


def get_variant(config: ml_collections.ConfigDict) -> Variant:
  """Returns the variant of `config.method`, with the critic override applied.

  Args:
    config: a full configuration.

  Returns:
    The `Variant`; `config.critic.conditional`, when set, overrides the
    method's critic type (the critic is switchable independently).

  Raises:
    ConfigError: for an unknown method name.
  """
  if config.method not in VARIANTS:
    raise errors.ConfigError(
        f"config.method: expected one of {sorted(VARIANTS)}, found "
        f"{config.method!r}")
  variant = VARIANTS[config.method]
  if config.critic.conditional is not None:
    variant = dataclasses.replace(
        variant, conditional_critic=bool(config.critic.conditional))
  return variant


def data_dir_hint(data_dir) -> str:
  """What a missing data_dir's error suggests.

  A preset's default, data/xlsa17/<DS>, exists only after download_data.

  Args:
    data_dir: the configured value.

  Returns:
    The commands that get the data, naming the dataset when the folder's
    name is a benchmark's.
  """
  from gmn_jax.data import download  # pylint: disable=g-import-not-at-top
  name = os.path.basename(os.path.normpath(data_dir)).upper() if isinstance(data_dir, str) else ""
  name = name if name in download.DATASETS else "<DS>"
  parent = os.path.dirname(os.path.normpath(data_dir)) if name != "<DS>" else ""
  return (f"get the benchmark with python -m experiments.download_data --dataset={name} "
          f"--out={parent or 'data/xlsa17'}, or write stand-in data with python -m "
          f"experiments.make_synthetic --preset={name} --out_dir=DIR, or name the "
          "directory with --config.data_dir=DIR")


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the default configuration (the reference's CUB settings).

  Returns:
    A ConfigDict; see docs/configuration.md for every field.
  """
  c = ml_collections.ConfigDict()
  c.dataset = "CUB"  # Only a label for outputs; the data come from data_dir.
  c.data_dir = ""  # An xlsa17 directory, or "builtin:digits".
  c.embedding = "att"  # att | sent | binary | att+sent
  c.feature_norm = "none"  # none | l2 | minmax | standardize
  c.split = "test"  # test | validation
  c.method = "cwgan_gm"  # one of VARIANTS
  c.seeds = (1, 67, 99)  # generator seeds (the reference's)
  c.num_parallel_seeds = 1  # seeds trained at once in one program (vmap)

  c.generator = ml_collections.ConfigDict()
  c.generator.kind = "latent_noise"  # latent_noise | attribute_concat
  c.generator.noise_dim = 512  # 0 means: equal to the embedding dim
  c.generator.hidden_dims = (2048,)

  c.critic = ml_collections.ConfigDict()
  c.critic.hidden_dims = (1024,)
  # None: as the method says; True/False: force a (un)conditional critic.
  c.critic.conditional = config_dict.placeholder(bool)

  c.train = ml_collections.ConfigDict()
  c.train.num_iterations = 100_000  # generator iterations
  c.train.batch_size = 256
  c.train.n_critic = 5
  c.train.gp_weight = 10.0
  c.train.lr_generator = 1e-4
  c.train.lr_critic = 1e-4
  c.train.adam_b1 = 0.0
  c.train.adam_b2 = 0.999
  # The dtype Adam's moments are stored in: float32 | bfloat16 (less memory
  # traffic on a GPU, slightly different numbers; docs/benchmarks.md).
  c.train.adam_moments_dtype = "float32"
  c.train.class_balanced = True  # critic's real batches weighted 1/n_class
  # iid: fixed-size independent draws | reference: the authors' epoch
  # iterators (short remainder batches, class cycles; reference_batches).
  c.train.sampling = "iid"
  c.train.iterations_per_call = 500  # generator iterations per jitted call
  c.train.log_every = 1000
  c.train.checkpoint_every = 10_000

  c.gm = ml_collections.ConfigDict()
  c.gm.weight = 100.0  # β (the reference's Q)
  c.gm.classifier = "bilinear"  # bilinear | softmax
  c.gm.num_classes = 5  # seen classes per generator iteration (n_gm_iter); 0: every one
  c.gm.real_per_class = 60  # per_class_batch_size
  c.gm.fake_repeat = 2  # fake batch = fake_repeat x real batch
  c.gm.granularity = "row"  # row | tensor | global
  # gram | autodiff: the same loss, from Gram matrices or by autodiff.
  c.gm.implementation = "gram"
  c.gm.num_theta_samples = 1  # M; 1 reproduces the reference
  c.gm.theta_sampling = "random_init"  # random_init | trajectory
  c.gm.trajectory_reset_every = 100  # R, for theta_sampling=trajectory
  c.gm.trajectory_lr = 0.01
  c.gm.trajectory_momentum = 0.9
  c.gm.trajectory_weight_decay = 1e-3

  c.cls = ml_collections.ConfigDict()
  c.cls.weight = 0.01  # c, the L_CLS weight of the *_cls variants
  c.cls.classifier = "bilinear"  # the frozen seen-class classifier
  c.cls.pretrain_epochs = 50
  c.cls.pretrain_lr = 1e-3

  # The frozen regressor of cycle-WGAN / SE-GZSL (methods with regression_loss).
  c.regressor = ml_collections.ConfigDict()
  # Defaults: the reference repository's scripts (cyclewgan_*.sh, regg_*.sh,
  # which take them from Felix et al.'s release).
  c.regressor.weight = 0.01  # R, the L_REG weight
  c.regressor.pretrain_epochs = 40
  c.regressor.pretrain_batch_size = 64
  c.regressor.pretrain_lr = 1e-4

  # The per-class maximum mean discrepancy of the gmmn method.
  c.mmd = ml_collections.ConfigDict()
  # The Gaussian kernels' sigmas, in units of the training features' RMS
  # distance to their mean (docs/generators.md): Bucher et al.'s fixed
  # variances 2..80 assume min-max scaled features, these carry over to any
  # feature scale.
  c.mmd.bandwidths = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
  c.mmd.num_classes = 5  # seen classes per generator iteration; 0: every one
  c.mmd.real_per_class = 60
  c.mmd.fake_per_class = 60

  # The conditional VAE of the cvae method (the decoder is the generator).
  c.cvae = ml_collections.ConfigDict()
  c.cvae.encoder_hidden_dims = (1024,)
  c.cvae.kl_weight = 1.0

  c.eval = ml_collections.ConfigDict()
  c.eval.classifier = "bilinear"  # bilinear | softmax | ale | devise
  c.eval.epochs = 200
  c.eval.batch_size = 256
  c.eval.lr = 0.01
  c.eval.lr_decay = 0.97  # per epoch
  c.eval.weight_decay = 1e-3
  c.eval.momentum = 0.9
  c.eval.margin = 1.0  # the hinge margin of the devise ranking loss
  c.eval.n_synth_unseen = 250
  c.eval.n_synth_seen = 0  # seen classes topped up to this many samples
  c.eval.num_classifier_seeds = 5
  # real_only's final classifier: a compatibility model, which scores unseen
  # classes from their embeddings although it never saw one (a softmax
  # classifier trained on seen classes alone cannot). Its optimiser settings,
  # None: those of eval.
  c.eval.real_only = ml_collections.ConfigDict()
  c.eval.real_only.classifier = "bilinear"
  c.eval.real_only.lr = config_dict.placeholder(float)
  c.eval.real_only.lr_decay = config_dict.placeholder(float)
  c.eval.real_only.weight_decay = config_dict.placeholder(float)

  c.precision = "float32"  # float32 | bfloat16 (matrix products only)
  return c


def _is_real(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _distinct_ints(values) -> bool:
  return (len(values) > 0 and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
          and len(set(values)) == len(values))


def config_rules() -> List[config_utils.Rule]:
  """The value constraints of every field (types are checked separately).

  Returns:
    `config_utils.Rule`s; the choices of data options come from the data
    modules, imported here so that importing this module stays cheap.
  """
  # pylint: disable=g-import-not-at-top
  from gmn_jax import classifier_sampling
  from gmn_jax import classifiers
  from gmn_jax import final_classifier
  from gmn_jax import gram_gradient_matching
  from gmn_jax import losses
  from gmn_jax import models
  from gmn_jax.data import preprocessing
  from gmn_jax.data import registry
  from gmn_jax.data import xlsa17
  # pylint: enable=g-import-not-at-top
  u = config_utils
  unit_interval_open = lambda path: u.Rule(
      path, lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)")
  return [
      u.existing_dir("data_dir", special_prefixes=(registry.BUILTIN_PREFIX,),
                     hint=data_dir_hint),
      u.one_of("embedding", xlsa17.EMBEDDINGS),
      u.one_of("feature_norm", preprocessing.FEATURE_NORMALIZATIONS),
      u.one_of("split", xlsa17.SPLITS),
      u.one_of("method", tuple(VARIANTS)),
      u.Rule("seeds", _distinct_ints, "a non-empty sequence of distinct ints"),
      u.positive_int("num_parallel_seeds"),
      u.one_of("generator.kind", models.GENERATOR_KINDS),
      u.non_negative_int("generator.noise_dim"),
      u.each_positive_int("generator.hidden_dims"),
      u.each_positive_int("critic.hidden_dims"),
      u.positive_int("train.num_iterations"),
      u.positive_int("train.batch_size"),
      u.positive_int("train.n_critic"),
      u.non_negative("train.gp_weight"),
      u.positive("train.lr_generator"),
      u.positive("train.lr_critic"),
      unit_interval_open("train.adam_b1"),
      unit_interval_open("train.adam_b2"),
      u.one_of("train.sampling", SAMPLING_MODES),
      u.one_of("train.adam_moments_dtype", ("float32", "bfloat16")),
      u.positive_int("train.iterations_per_call"),
      u.positive_int("train.log_every"),
      u.positive_int("train.checkpoint_every"),
      u.non_negative("gm.weight"),
      u.one_of("gm.classifier", classifiers.CLASSIFIER_KINDS),
      u.non_negative_int("gm.num_classes"),
      u.positive_int("gm.real_per_class"),
      u.positive_int("gm.fake_repeat"),
      u.one_of("gm.granularity", losses.GRANULARITIES),
      u.one_of("gm.implementation", gram_gradient_matching.IMPLEMENTATIONS),
      u.positive_int("gm.num_theta_samples"),
      u.one_of("gm.theta_sampling", classifier_sampling.SAMPLER_KINDS),
      u.positive_int("gm.trajectory_reset_every"),
      u.non_negative("gm.trajectory_lr"),
      unit_interval_open("gm.trajectory_momentum"),
      u.non_negative("gm.trajectory_weight_decay"),
      u.non_negative("cls.weight"),
      u.one_of("cls.classifier", classifiers.CLASSIFIER_KINDS),
      u.positive_int("cls.pretrain_epochs"),
      u.positive("cls.pretrain_lr"),
      u.one_of("eval.classifier", final_classifier.FINAL_CLASSIFIER_KINDS),
      u.positive_int("eval.epochs"),
      u.positive_int("eval.batch_size"),
      u.positive("eval.lr"),
      u.Rule("eval.lr_decay", lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]"),
      u.non_negative("eval.weight_decay"),
      unit_interval_open("eval.momentum"),
      u.positive("eval.margin"),
      u.one_of("eval.real_only.classifier", final_classifier.COMPATIBILITY_KINDS),
      u.positive("eval.real_only.lr"),
      u.Rule("eval.real_only.lr_decay", lambda v: _is_real(v) and 0 < v <= 1,
             "a number in (0, 1]"),
      u.non_negative("eval.real_only.weight_decay"),
      u.non_negative("regressor.weight"),
      u.positive_int("regressor.pretrain_epochs"),
      u.positive_int("regressor.pretrain_batch_size"),
      u.positive("regressor.pretrain_lr"),
      u.Rule("mmd.bandwidths", lambda v: len(v) > 0 and all(_is_real(b) and b > 0 for b in v),
             "a non-empty sequence of positive numbers"),
      u.non_negative_int("mmd.num_classes"),
      u.positive_int("mmd.real_per_class"),
      u.positive_int("mmd.fake_per_class"),
      u.each_positive_int("cvae.encoder_hidden_dims"),
      u.non_negative("cvae.kl_weight"),
      u.non_negative_int("eval.n_synth_unseen"),
      u.non_negative_int("eval.n_synth_seen"),
      u.positive_int("eval.num_classifier_seeds"),
      u.one_of("precision", tuple(models.PRECISIONS)),
      # The transductive critic sees unlabelled unseen features: no class to
      # condition on, and every batch holds a seen and an unseen example.
      u.Rule(("method", "critic.conditional"),
             lambda method, conditional: not (_transductive(method) and conditional),
             "no conditional critic for a transductive method", skip_none=True),
      # A critic type means nothing to a method without a critic.
      u.Rule(("method", "critic.conditional"),
             lambda method, conditional: method not in VARIANTS or VARIANTS[method].has_critic,
             "no critic.conditional for a method without a critic (gmmn, cvae)"),
      u.Rule(("method", "train.batch_size"),
             lambda method, batch_size: not _transductive(method) or batch_size >= 2,
             "a batch of at least 2 for a transductive method (seen and unseen examples)"),
      # The reference code has iterators for its WGAN methods only: none for
      # a transductive critic batch (seen and unlabelled unseen examples) and
      # no code at all for the gmmn and cvae objectives.
      u.Rule(("method", "train.sampling"), _reference_sampling_allowed,
             "a non-transductive WGAN method for train.sampling 'reference' (the reference "
             "code has no iterators for wgan_su_gm, gmmn, cvae)"),
  ]


def _transductive(method) -> bool:
  return method in VARIANTS and VARIANTS[method].transductive


def _reference_sampling_allowed(method, sampling) -> bool:
  if sampling != "reference" or method not in VARIANTS:
    return True  # An unknown method or mode has its own message.
  variant = VARIANTS[method]
  return variant.objective == "wgan" and not variant.transductive


def validate(config: ml_collections.ConfigDict, *, check_data_dir: bool = True) -> None:
  """Checks every field name, type and value before anything is compiled.

  This is the one place where a config is checked: the specs built from it
  (`gmn_jax.specs`) and everything below them trust it.

  Args:
    config: a full configuration (e.g. a preset with command-line overrides).
    check_data_dir: whether `data_dir` must name an existing directory (off
      for runs given an in-memory dataset, where it is only a label).

  Raises:
    ConfigError: one line naming every unknown, missing, mistyped or
      out-of-range field.
  """
  rules = config_rules()
  if not check_data_dir:
    rules = [rule for rule in rules if rule.paths != ("data_dir",)]
  config_utils.validate_config(config, get_base_config(), rules)
