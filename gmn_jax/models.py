"""Generators and critics as `flax.linen` modules (classifiers: `gmn_jax.classifiers`).

Every network is a hashable module holding its sizes and compute dtype (so it
can live in a static spec closed over by jitted code), used through
`init`/`apply`; parameters are plain nested dicts of float32 arrays.
`init_generator` and `init_critic` build them; `generate`
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

Initialisation follows the reference: Xavier-normal kernels with gain sqrt(2)
(a plain, untruncated normal of std sqrt(2) * sqrt(2 / (fan_in + fan_out)))
and zero biases.

Precision: a generator's or critic's `dtype` (float32 or bfloat16) is that of
its matrix products and the activations between them. Parameters stay
float32 (so do their gradients and optimiser states) and are cast at the
point of use; outputs are float32, so WGAN-GP, the losses and gradient
matching see float32 whatever the dtype. A latent_noise generator computes
mu(a), logvar(a), the exp and z = mu + exp(logvar / 2) eps in float32 always
(cheap next to the MLP; the exp would magnify bfloat16 rounding of logvar);
only its MLP runs in `dtype`. (A
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

GENERATOR_KINDS = ("latent_noise", "attribute_concat")
# config.precision: the generator's and critic's compute dtype.
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Xavier-normal with gain g has variance g^2 * 2 / (fan_in + fan_out), i.e.
# variance_scaling's scale / fan_avg with scale = g^2.
_xavier_init = nn.initializers.variance_scaling(XAVIER_GAIN**2, "fan_avg", "normal")
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
