"""Generators, critics and classifiers as `flax.linen` modules.

Every network is a hashable module holding its sizes and compute dtype (so it
can live in a static spec closed over by jitted code), used through
`init`/`apply`; parameters are plain nested dicts of float32 arrays.
`init_generator`, `init_critic` and `get_classifier` build them; `generate`
draws the noise and applies a generator (`sample_fn` binds it to one).

Layouts (a dense layer is {"kernel": (in, out), "bias": (out,)}):
  generator, kind "latent_noise": {"mu": dense K->Z, "logvar": dense K->Z,
    "layers": {"layer_0": dense Z->H1, ..., "layer_n": dense Hn->D}}
  generator, kind "attribute_concat": {"layers": {"layer_0": {"kernel_noise":
    (Z, H1), "kernel_embedding": (K, H1), "bias": (H1,)}, ..., "layer_n": dense
    Hn->D}}: the first layer is a dense layer on concat[z, a] with its
    kernel kept in one block per input (`_BlockDense`)
  critic: {"layers": {"layer_0": {"kernel_features": (D, H1),
    "kernel_embedding": (K, H1), "bias"} (a plain dense D->H1 when
    unconditional), ..., "layer_n": dense Hn->1}}
  bilinear classifier: {"kernel": (D, K), "bias": (K,) or ()}
  softmax classifier: {"kernel": (D, C), "bias": (C,)}

Initialisation follows the reference: Xavier-normal kernels with gain sqrt(2)
(a plain, untruncated normal of std sqrt(2) * sqrt(2 / (fan_in + fan_out)))
and zero biases for the generator and the critic; N(0, 0.02^2) kernels and
zero biases for the classifiers.

Precision: a generator's or critic's `dtype` (float32 or bfloat16) is that of
its matrix products and the activations between them. Parameters stay
float32 (so do their gradients and optimiser states) and are cast at the
point of use; outputs are float32, so WGAN-GP, the losses and gradient
matching see float32 whatever the dtype. A latent_noise generator computes
mu(a), logvar(a), the exp and z = mu + exp(logvar / 2) eps in float32 always
(cheap next to the MLP; the exp would magnify bfloat16 rounding of logvar);
only its MLP runs in `dtype`. The classifiers always run in float32. (A
float64 `dtype`, under x64 in tests, computes and returns float64 throughout:
"float32" above means `jnp.promote_types(dtype, jnp.float32)`.)
"""

import functools
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from gmn_jax.errors import ConfigError

LEAKY_RELU_SLOPE = 0.2
XAVIER_GAIN = math.sqrt(2.0)
CLASSIFIER_INIT_STD = 0.02

GENERATOR_KINDS = ("latent_noise", "attribute_concat")
# config.precision: the generator's and critic's compute dtype.
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CLASSIFIER_KINDS = ("bilinear", "softmax")
BILINEAR_BIAS_KINDS = ("vector", "scalar")

# Xavier-normal with gain g has variance g^2 * 2 / (fan_in + fan_out), i.e.
# variance_scaling's scale / fan_avg with scale = g^2.
_xavier_init = nn.initializers.variance_scaling(XAVIER_GAIN**2, "fan_avg", "normal")
_classifier_init = nn.initializers.normal(CLASSIFIER_INIT_STD)
_zeros = nn.initializers.zeros_init()

Dtype = Any


def _dense(features, dtype, name):
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=_xavier_init, bias_init=_zeros, name=name)


def _outer_dtype(dtype):
  """The dtype of a module's inputs, outputs and float32 parts: float32, or float64."""
  return jnp.promote_types(dtype, jnp.float32)


class _BlockDense(nn.Module):
  """A dense layer on the concatenation of named inputs, one kernel block per input.

  concat(parts) @ kernel equals the sum of the per-part products, and so does
  this layer; kept apart, the gradient w.r.t. one part never computes the
  others'. That matters for the critic: the gradient penalty differentiates
  it w.r.t. its features only, and on one concatenated kernel XLA also forms
  the embedding block's cotangent (CUB's 1,336-d embeddings: 9% more FLOPs
  per generator iteration). The blocks are drawn as one Xavier kernel over
  the whole fan-in would be. Params: {"kernel_<name>": (in_name, out), ...,
  "bias": (out,)}.

  Attributes:
    features: the output width.
    dtype: the compute dtype.
  """

  features: int
  dtype: Dtype

  @nn.compact
  def __call__(self, parts):
    fan_in = sum(x.shape[-1] for x in parts.values())
    init = nn.initializers.normal(XAVIER_GAIN * math.sqrt(2.0 / (fan_in + self.features)))
    out = self.param("bias", _zeros, (self.features,), jnp.float32).astype(self.dtype)
    for name, x in parts.items():
      kernel = self.param(f"kernel_{name}", init, (x.shape[-1], self.features), jnp.float32)
      out = out + jnp.asarray(x, self.dtype) @ kernel.astype(self.dtype)
    return out


class _MLP(nn.Module):
  """Dense layers "layer_0".."layer_n" with LeakyReLU(0.2) between them.

  The input is an array, or a dict of named arrays that the first layer
  reads as their concatenation (`_BlockDense`).
  """

  widths: tuple[int, ...]
  dtype: Dtype

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.widths):
      if i:
        x = nn.leaky_relu(x, LEAKY_RELU_SLOPE)
      if isinstance(x, dict):
        x = _BlockDense(width, self.dtype, name=f"layer_{i}")(x)
      else:
        x = _dense(width, self.dtype, name=f"layer_{i}")(x)
    return x


class _HiddenDimsAsTuple:
  """Stores `hidden_dims` as a tuple: a list still gives a hashable module."""

  def __post_init__(self):
    object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
    super().__post_init__()


# --------------------------------------------------------------------------
# Generator.


class Generator(_HiddenDimsAsTuple, nn.Module):
  """A conditional feature generator G(z, a).

  Attributes:
    kind: "latent_noise" (z = mu(a) + exp(logvar(a)/2) * eps, then an MLP on
      z; the reference's CUB/AWA1 model) or "attribute_concat" (an MLP on
      concat[eps, a]; f-CLSWGAN's and the reference's SUN model).
    embedding_dim: K, the class-embedding size (read by `init_generator`).
    feature_dim: D, the generated feature size.
    noise_dim: Z, the size of the noise eps ~ N(0, I).
    hidden_dims: widths of the hidden layers (may be empty).
    dtype: the compute dtype of the MLP (jnp.float32 or jnp.bfloat16).
  """

  kind: str
  embedding_dim: int
  feature_dim: int
  noise_dim: int
  hidden_dims: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, embeddings, noise):
    """Generates features from given noise (deterministic).

    Args:
      embeddings: (B, K) class embeddings.
      noise: (B, Z) draws of N(0, I).

    Returns:
      (B, D) non-negative float32 features.
    """
    widths = self.hidden_dims + (self.feature_dim,)
    mlp = _MLP(widths, self.dtype, name="layers")
    outer = _outer_dtype(self.dtype)
    noise = jnp.asarray(noise, outer)
    if self.kind == "latent_noise":
      mu = _dense(self.noise_dim, outer, name="mu")(embeddings)
      logvar = _dense(self.noise_dim, outer, name="logvar")(embeddings)
      out = mlp(mu + jnp.exp(0.5 * logvar) * noise)
    elif self.kind == "attribute_concat":
      out = mlp({"noise": noise, "embedding": jnp.asarray(embeddings, outer)})
    else:
      raise ConfigError(f"generator kind: expected one of {GENERATOR_KINDS}, "
                        f"found {self.kind!r}")
    return nn.relu(out).astype(outer)


def generator_noise(module: Generator, batch_size: int, key) -> jax.Array:
  """The generator's noise, float32 whatever `module.dtype` (same draws in bf16 runs).

  Args:
    module: the generator.
    batch_size: B.
    key: PRNG key.

  Returns:
    (B, Z) `jax.random.normal(key, (batch_size, module.noise_dim), jnp.float32)`.
  """
  return jax.random.normal(key, (batch_size, module.noise_dim), jnp.float32)


def generate(module: Generator, params, embeddings, key) -> jax.Array:
  """Generates one feature vector per class embedding, with fresh noise.

  Args:
    module: the generator.
    params: its parameters (from `init_generator`).
    embeddings: (B, K) class embeddings.
    key: PRNG key of the noise (see `generator_noise`).

  Returns:
    (B, D) non-negative float32 features.
  """
  noise = generator_noise(module, embeddings.shape[0], key)
  return module.apply({"params": params}, embeddings, noise)


@functools.cache
def sample_fn(module: Generator) -> Callable:
  """`generate` bound to one generator: `fn(params, embeddings, key) -> features`.

  One function object per module (equal modules share it), so jitted code
  that takes it as a static argument (`synthesis.synthesize`) compiles once.

  Args:
    module: the generator.

  Returns:
    The bound function.
  """
  return functools.partial(generate, module)


# --------------------------------------------------------------------------
# Critic.


class Critic(_HiddenDimsAsTuple, nn.Module):
  """A WGAN critic D(x, a) (conditional) or D(x) (unconditional).

  Attributes:
    feature_dim: D (read by `init_critic`).
    embedding_dim: K (read by `init_critic` when conditional; ignored
      otherwise).
    hidden_dims: widths of the hidden layers (may be empty).
    conditional: whether the first layer reads concat[x, a] or x alone.
    dtype: the compute dtype (jnp.float32 or jnp.bfloat16).
  """

  feature_dim: int
  embedding_dim: int
  hidden_dims: tuple[int, ...] = ()
  conditional: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features, embeddings=None):
    """Scores features (higher means "more real").

    Args:
      features: (B, D).
      embeddings: (B, K) class embeddings for a conditional critic; must be
        None for an unconditional one.

    Returns:
      (B,) float32 scores.

    Raises:
      ConfigError: when embeddings are missing for a conditional critic or
        given to an unconditional one.
    """
    outer = _outer_dtype(self.dtype)
    x = conditional_input(features, embeddings, self.conditional, outer, "critic")
    scores = _MLP(self.hidden_dims + (1,), self.dtype, name="layers")(x)
    return scores[:, 0].astype(outer)


def conditional_input(features, embeddings, conditional: bool, dtype, network: str):
  """The first layer's input of a network that reads [x, a] or x alone.

  Args:
    features: (B, D).
    embeddings: (B, K) class embeddings, or None.
    conditional: whether the network reads both (then as the blocks of one
      `_BlockDense` layer: one kernel per input).
    dtype: the dtype the inputs are cast to.
    network: its name in error messages ("critic", "encoder").

  Returns:
    {"features", "embedding"} for a conditional network, else the features.

  Raises:
    ConfigError: when embeddings are missing for a conditional network or
      given to an unconditional one.
  """
  if conditional:
    if embeddings is None:
      raise ConfigError(f"{network} embeddings: expected (B, K) class embeddings for a "
                        f"conditional {network}, found None")
    return {"features": jnp.asarray(features, dtype), "embedding": jnp.asarray(embeddings, dtype)}
  if embeddings is not None:
    raise ConfigError(f"{network} embeddings: expected None for an unconditional {network}, "
                      f"found an array of shape {jnp.shape(embeddings)}")
  return jnp.asarray(features, dtype)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_params(module, key, input_shapes):
  """`module.init` on zeros of the given shapes (None passes None); jitted."""
  inputs = [None if shape is None else jnp.zeros(shape, jnp.float32)
            for shape in input_shapes]
  return flax.core.unfreeze(module.init({"params": key}, *inputs)["params"])


def init_generator(module: Generator, key):
  """Initialises a generator's parameters (jitted; works under vmap over keys).

  Args:
    module: the generator.
    key: PRNG key.

  Returns:
    The parameter dict (layout in the module docstring), float32.
  """
  return _init_params(module, key, ((1, module.embedding_dim), (1, module.noise_dim)))


def init_critic(module: Critic, key):
  """Initialises a critic's parameters (jitted; works under vmap over keys).

  Args:
    module: the critic.
    key: PRNG key.

  Returns:
    The parameter dict (layout in the module docstring), float32.
  """
  embeddings = (1, module.embedding_dim) if module.conditional else None
  return _init_params(module, key, ((1, module.feature_dim), embeddings))


# --------------------------------------------------------------------------
# Classifiers.


def bilinear_head(params, projected, class_embeddings):
  """Bilinear logits from the projected features H = features @ kernel.

  Args:
    params: the classifier's parameters; only "bias" is read (the kernel may
      be left out).
    projected: (B, K) features times the kernel.
    class_embeddings: (C, K), the classes to score.

  Returns:
    (B, C) logits: (H + b) a_c for a vector bias, H a_c + b for a scalar one.
  """
  if params["bias"].ndim == 0:
    return projected @ class_embeddings.T + params["bias"]
  return (projected + params["bias"]) @ class_embeddings.T


def softmax_head(params, projected, class_embeddings=None):
  """Softmax logits from the projected features H = features @ kernel.

  Args:
    params: the classifier's parameters; only "bias" is read (the kernel may
      be left out).
    projected: (B, C) features times the kernel.
    class_embeddings: ignored except that, when given, its number of rows must
      be C (the uniform classifier API).

  Returns:
    (B, C) logits H + b.

  Raises:
    ConfigError: when class_embeddings has the wrong number of rows.
  """
  num_classes = projected.shape[-1]
  if class_embeddings is not None and class_embeddings.shape[0] != num_classes:
    raise ConfigError(f"softmax classifier class_embeddings: expected {num_classes} rows "
                      f"(one per class), found {class_embeddings.shape[0]}")
  return projected + params["bias"]


class BilinearClassifier(nn.Module):
  """Bilinear compatibility classifier; params {"kernel": (D, K), "bias"}.

  Attributes:
    bias: "vector" for scores (x W + b) . a_c with b in R^K (the reference),
      "scalar" for x W a_c + b with one scalar b.
  """

  bias: str = "vector"

  @nn.compact
  def __call__(self, features, class_embeddings):
    """(B, C) logits of features (B, D) for class_embeddings (C, K)."""
    feature_dim, embedding_dim = features.shape[-1], class_embeddings.shape[-1]
    if self.bias not in BILINEAR_BIAS_KINDS:
      raise ConfigError(
          f"bilinear bias: expected one of {BILINEAR_BIAS_KINDS}, found {self.bias!r}")
    kernel = self.param("kernel", _classifier_init, (feature_dim, embedding_dim))
    bias_shape = (embedding_dim,) if self.bias == "vector" else ()
    bias = self.param("bias", _zeros, bias_shape)
    return bilinear_head({"bias": bias}, features @ kernel, class_embeddings)


class SoftmaxClassifier(nn.Module):
  """Linear softmax classifier; params {"kernel": (D, C), "bias": (C,)}.

  Attributes:
    num_classes: C.
  """

  num_classes: int

  @nn.compact
  def __call__(self, features, class_embeddings=None):
    """(B, C) logits of features (B, D); class_embeddings as in `softmax_head`."""
    kernel = self.param("kernel", _classifier_init, (features.shape[-1], self.num_classes))
    bias = self.param("bias", _zeros, (self.num_classes,))
    return softmax_head({"bias": bias}, features @ kernel, class_embeddings)


@functools.cache
def _bilinear_fns(bias):
  """One (init_fn, apply_fn) pair per bias form: the same objects on every call."""
  module = BilinearClassifier(bias=bias)

  def init_fn(key, *, feature_dim, embedding_dim, num_classes=None):
    del num_classes  # The class matrix is an input, not a parameter.
    return _init_params(module, key, ((1, feature_dim), (1, embedding_dim)))

  def apply_fn(params, features, class_embeddings):
    return module.apply({"params": params}, features, class_embeddings)

  return init_fn, apply_fn


def _softmax_init(key, *, feature_dim, num_classes, embedding_dim=None):
  del embedding_dim  # A softmax classifier does not read embeddings.
  return _init_params(SoftmaxClassifier(num_classes), key, ((1, feature_dim), None))


def _softmax_apply(params, features, class_embeddings=None):
  module = SoftmaxClassifier(params["kernel"].shape[-1])
  return module.apply({"params": params}, features, class_embeddings)


def get_classifier(kind, *, bilinear_bias="vector") -> tuple[Callable, Callable]:
  """Returns a classifier's (init_fn, apply_fn) with uniform signatures.

  `init_fn(key, *, feature_dim, embedding_dim, num_classes) -> params` (sizes
  the kind does not use are ignored) and `apply_fn(params, features,
  class_embeddings) -> (B, C)` logits with C = class_embeddings.shape[0]. Both
  run the flax modules and work under jit and vmap (e.g. over a leading axis
  of sampled parameter sets).

  Args:
    kind: "bilinear" or "softmax".
    bilinear_bias: "vector" or "scalar", the bilinear bias form.

  Returns:
    (init_fn, apply_fn).

  Raises:
    ConfigError: for an unknown kind or bias form.
  """
  if kind == "bilinear":
    if bilinear_bias not in BILINEAR_BIAS_KINDS:
      raise ConfigError(
          f"bilinear bias: expected one of {BILINEAR_BIAS_KINDS}, found {bilinear_bias!r}")
    return _bilinear_fns(bilinear_bias)
  if kind == "softmax":
    return _softmax_init, _softmax_apply
  raise ConfigError(f"classifier kind: expected one of {CLASSIFIER_KINDS}, found {kind!r}")


def get_classifier_head(kind) -> Callable:
  """The part of a classifier after its kernel: logits from features @ kernel.

  Every classifier kind reads the features only through H = features @
  params["kernel"], so `apply_fn(params, x, E) == head(params, x @
  params["kernel"], E)`; gradient matching uses that to work with the small
  Gram matrices of the features (`gmn_jax.gram_gradient_matching`).

  Args:
    kind: "bilinear" or "softmax".

  Returns:
    `head(params, projected, class_embeddings) -> (B, C)` logits; it reads
    every parameter except the kernel.

  Raises:
    ConfigError: for an unknown kind.
  """
  heads = {"bilinear": bilinear_head, "softmax": softmax_head}
  if kind not in heads:
    raise ConfigError(f"classifier kind: expected one of {CLASSIFIER_KINDS}, found {kind!r}")
  return heads[kind]

