"""The configuration schema: every field, its default and the training variants.

Per-dataset presets under `experiments/configs/` start from `get_base_config()`
and change what the reference's scripts change; every field can be overridden
on the command line (`--config.gm.weight=50`). Defaults equal the reference
code's CUB configuration (see docs/configuration.md for each field's meaning).
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from gmn_jax import errors


@dataclasses.dataclass(frozen=True)
class Variant:
  """What a training method switches on.

  Attributes:
    name: the method name used on the command line and in results.
    uses_generator: False only for `real_only` (final classifier on real seen
      features alone).
    conditional_critic: whether the critic sees [x, a] (cWGAN) or x (WGAN).
    gradient_matching: whether the generator loss has the β·L_GM term.
    classification_loss: whether the generator loss has the c·L_CLS term
      (a seen-class classifier pretrained and frozen).
    transductive: whether the critic also sees unlabelled unseen test
      features and the generator produces seen and unseen classes.
    paper_row: the row label in the paper's ablation table.
  """

  name: str
  uses_generator: bool
  conditional_critic: bool
  gradient_matching: bool
  classification_loss: bool
  transductive: bool
  paper_row: str


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
                "cWGAN^S + CLS (f-CLSWGAN-like)"),
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
  c.train.class_balanced = True  # critic's real batches weighted 1/n_class
  c.train.iterations_per_call = 500  # generator iterations per jitted call
  c.train.log_every = 1000
  c.train.checkpoint_every = 10_000

  c.gm = ml_collections.ConfigDict()
  c.gm.weight = 100.0  # β (the reference's Q)
  c.gm.classifier = "bilinear"  # bilinear | softmax
  c.gm.num_classes = 5  # seen classes per generator iteration (n_gm_iter)
  c.gm.real_per_class = 60  # per_class_batch_size
  c.gm.fake_repeat = 2  # fake batch = fake_repeat x real batch
  c.gm.granularity = "row"  # row | tensor | global
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

  c.eval = ml_collections.ConfigDict()
  c.eval.classifier = "bilinear"  # bilinear | softmax
  c.eval.epochs = 200
  c.eval.batch_size = 256
  c.eval.lr = 0.01
  c.eval.lr_decay = 0.97  # per epoch
  c.eval.weight_decay = 1e-3
  c.eval.momentum = 0.9
  c.eval.n_synth_unseen = 250
  c.eval.n_synth_seen = 0  # seen classes topped up to this many samples
  c.eval.num_classifier_seeds = 5
  c.eval.selection = "last"  # last | validation

  c.precision = "float32"  # float32 | bfloat16 (matrix products only)
  return c
