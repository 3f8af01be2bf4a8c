"""Generators, critics and classifiers as pure functions over plain pytrees.

Every network is a pair `init_*(key, ...) -> params` / `apply_*(params, ...)`.
Parameters are nested dicts of arrays; a dense layer is
`{"kernel": (in, out), "bias": (out,)}` (the Flax layout). A layer whose input
is a concatenation, e.g. `[z, a]`, stores one kernel per part
(`"kernel_noise"`, `"kernel_embedding"`, ...): `concat(parts) @ kernel` equals
the sum of the per-part products, and keeping the parts apart lets the apply
functions read every size from the shapes, so they need no config.

Layouts:
  generator, kind "latent_noise": {"mu": dense K->Z, "logvar": dense K->Z,
    "layers": {"layer_0": dense Z->H1, ..., "layer_n": dense Hn->D}}
  generator, kind "attribute_concat": {"layers": {"layer_0": {"kernel_noise":
    (Z, H1), "kernel_embedding": (K, H1), "bias": (H1,)}, ..., "layer_n"}}
  critic: {"layers": {"layer_0": conditional {"kernel_features": (D, H1),
    "kernel_embedding": (K, H1), "bias"} or unconditional {"kernel", "bias"},
    ..., "layer_n": dense Hn->1}}
  bilinear classifier: {"kernel": (D, K), "bias": (K,) or ()}
  softmax classifier: {"kernel": (D, C), "bias": (C,)}
"""

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

from gmn_jax.errors import ConfigError

LEAKY_RELU_SLOPE = 0.2
# The reference initialises G and D with Xavier-normal of gain sqrt(2) and the
# classifiers with N(0, 0.02^2).
XAVIER_GAIN = math.sqrt(2.0)
CLASSIFIER_INIT_STD = 0.02

GENERATOR_KINDS = ("latent_noise", "attribute_concat")
CLASSIFIER_KINDS = ("bilinear", "softmax")
BILINEAR_BIAS_KINDS = ("vector", "scalar")


# --------------------------------------------------------------------------
# Layers.


def _standard_normals(key, shapes):
  """Independent N(0, 1) float32 arrays of the given shapes, from one draw.

  The draw's length is rounded up to a power of two, so that networks of
  different sizes share a few compiled random-number programs: on CPU,
  compiling the random-number generator for each new shape dominates the
  cost of an init.
  """
  sizes = [math.prod(shape) for shape in shapes]
  padded = 1 << max(sum(sizes) - 1, 0).bit_length()
  flat = jax.random.normal(key, (padded,), jnp.float32)
  arrays, offset = [], 0
  for shape, size in zip(shapes, sizes):
    arrays.append(flat[offset:offset + size].reshape(shape))
    offset += size
  return arrays


def _init_layers(key, layer_specs):
  """Dense layers with Xavier-normal (gain sqrt(2)) kernels and zero biases.

  Args:
    key: PRNG key.
    layer_specs: a sequence of (kernel_inputs, out_dim), kernel_inputs a dict
      from kernel name to its input size. A layer with several kernels is a
      dense layer on their concatenated inputs, so its fan-in is their sum.

  Returns:
    One dict per spec: the kernels (in, out_dim) and "bias" (out_dim,).
  """
  shapes = [(in_dim, out_dim) for inputs, out_dim in layer_specs for in_dim in inputs.values()]
  normals = iter(_standard_normals(key, shapes))
  layers = []
  for inputs, out_dim in layer_specs:
    std = XAVIER_GAIN * math.sqrt(2.0 / (sum(inputs.values()) + out_dim))
    layer = {name: std * next(normals) for name in inputs}
    layer["bias"] = jnp.zeros((out_dim,), jnp.float32)
    layers.append(layer)
  return layers


def _mlp_specs(first_inputs, hidden_dims, out_dim):
  """Layer specs of an MLP whose first layer reads `first_inputs`."""
  widths = list(hidden_dims) + [out_dim]
  specs = [(first_inputs, widths[0])]
  specs += [({"kernel": widths[i - 1]}, widths[i]) for i in range(1, len(widths))]
  return specs


def _as_mlp(layers):
  return {f"layer_{i}": layer for i, layer in enumerate(layers)}


def _apply_dense(layer, x):
  return x @ layer["kernel"] + layer["bias"]


def _apply_concat_dense(layer, parts):
  out = layer["bias"]
  for name, x in parts.items():
    out = out + x @ layer[f"kernel_{name}"]
  return out


def _check_widths(name, widths):
  if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
    raise ConfigError(f"{name}: expected a sequence of positive ints, found {widths!r}")
  widths = tuple(widths)
  if any(not isinstance(w, numbers.Integral) or isinstance(w, bool) or w <= 0
         for w in widths):
    raise ConfigError(f"{name}: expected a sequence of positive ints, found {widths!r}")
  return tuple(int(w) for w in widths)


def _check_positive(name, value, allow_zero=False):
  low = 0 if allow_zero else 1
  if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
      or value < low):
    kind = "a non-negative int" if allow_zero else "a positive int"
    raise ConfigError(f"{name}: expected {kind}, found {value!r}")


def _apply_mlp_tail(layers, h):
  """Applies layers 1..n to the first layer's pre-activation `h`.

  Hidden layers use LeakyReLU(0.2); the caller chooses the output activation.
  """
  for i in range(1, len(layers)):
    h = jax.nn.leaky_relu(h, LEAKY_RELU_SLOPE)
    h = _apply_dense(layers[f"layer_{i}"], h)
  return h


# --------------------------------------------------------------------------
# Generators.


def init_generator(key, *, kind, embedding_dim, feature_dim, noise_dim, hidden_dims):
  """Initialises a conditional feature generator G(z, a).

  Args:
    key: PRNG key.
    kind: "latent_noise" (z = mu(a) + exp(logvar(a)/2) * eps, then an MLP on
      z; the reference's CUB/AWA1 model) or "attribute_concat" (an MLP on
      concat[z, a] with z ~ N(0, I); f-CLSWGAN's and the reference's SUN model).
    embedding_dim: K, the class-embedding size.
    feature_dim: D, the generated feature size.
    noise_dim: Z, the noise size.
    hidden_dims: widths of the hidden layers (may be empty).

  Returns:
    The parameter pytree (see the module docstring for its layout). Weights
    are Xavier-normal with gain sqrt(2), biases zero.

  Raises:
    ConfigError: for an unknown kind or non-positive sizes.
  """
  if kind not in GENERATOR_KINDS:
    raise ConfigError(f"generator kind: expected one of {GENERATOR_KINDS}, found {kind!r}")
  _check_positive("embedding_dim", embedding_dim)
  _check_positive("feature_dim", feature_dim)
  _check_positive("noise_dim", noise_dim)
  hidden_dims = _check_widths("hidden_dims", hidden_dims)
  if kind == "latent_noise":
    heads = [({"kernel": embedding_dim}, noise_dim)] * 2
    layers = _init_layers(key, heads + _mlp_specs({"kernel": noise_dim}, hidden_dims, feature_dim))
    return {"mu": layers[0], "logvar": layers[1], "layers": _as_mlp(layers[2:])}
  first_inputs = {"kernel_noise": noise_dim, "kernel_embedding": embedding_dim}
  return {"layers": _as_mlp(_init_layers(key, _mlp_specs(first_inputs, hidden_dims,
                                                         feature_dim)))}


def generator_kind(params):
  """Returns "latent_noise" or "attribute_concat", read from the keys.

  Args:
    params: generator parameters from `init_generator`.

  Returns:
    The generator kind.
  """
  return "latent_noise" if "mu" in params else "attribute_concat"


def generator_noise_dim(params):
  """Returns the noise size Z of a generator.

  Args:
    params: generator parameters from `init_generator`.

  Returns:
    Z as a Python int.
  """
  if generator_kind(params) == "latent_noise":
    return int(params["mu"]["kernel"].shape[1])
  return int(params["layers"]["layer_0"]["kernel_noise"].shape[0])


def apply_generator_with_noise(params, embeddings, noise):
  """Generates features from given standard-normal noise (deterministic).

  Args:
    params: generator parameters from `init_generator`.
    embeddings: (B, K) class embeddings.
    noise: (B, Z) draws of N(0, I).

  Returns:
    (B, D) non-negative features.
  """
  layers = params["layers"]
  if generator_kind(params) == "latent_noise":
    mu = _apply_dense(params["mu"], embeddings)
    logvar = _apply_dense(params["logvar"], embeddings)
    z = mu + jnp.exp(0.5 * logvar) * noise
    h = _apply_dense(layers["layer_0"], z)
  else:
    h = _apply_concat_dense(layers["layer_0"], {"noise": noise, "embedding": embeddings})
  return jax.nn.relu(_apply_mlp_tail(layers, h))


def apply_generator(params, embeddings, key):
  """Generates one feature vector per class embedding, with fresh noise.

  Args:
    params: generator parameters from `init_generator`.
    embeddings: (B, K) class embeddings.
    key: PRNG key for the noise.

  Returns:
    (B, D) non-negative features.
  """
  noise_shape = (embeddings.shape[0], generator_noise_dim(params))
  noise = jax.random.normal(key, noise_shape, embeddings.dtype)
  return apply_generator_with_noise(params, embeddings, noise)


# --------------------------------------------------------------------------
# Critic.


def init_critic(key, *, feature_dim, embedding_dim, hidden_dims):
  """Initialises a WGAN critic D(x, a) (or D(x) when embedding_dim is 0).

  Args:
    key: PRNG key.
    feature_dim: D.
    embedding_dim: K; 0 makes the critic unconditional.
    hidden_dims: widths of the hidden layers (may be empty).

  Returns:
    The parameter pytree; Xavier-normal weights with gain sqrt(2), zero biases.

  Raises:
    ConfigError: for non-positive sizes.
  """
  _check_positive("feature_dim", feature_dim)
  _check_positive("embedding_dim", embedding_dim, allow_zero=True)
  hidden_dims = _check_widths("hidden_dims", hidden_dims)
  if embedding_dim:
    first_inputs = {"kernel_features": feature_dim, "kernel_embedding": embedding_dim}
  else:
    first_inputs = {"kernel": feature_dim}
  return {"layers": _as_mlp(_init_layers(key, _mlp_specs(first_inputs, hidden_dims, 1)))}


def critic_is_conditional(params):
  """Whether the critic takes class embeddings.

  Args:
    params: critic parameters from `init_critic`.

  Returns:
    True for D(x, a), False for D(x).
  """
  return "kernel_embedding" in params["layers"]["layer_0"]


def apply_critic(params, features, embeddings=None):
  """Scores features (higher means "more real").

  Args:
    params: critic parameters from `init_critic`.
    features: (B, D).
    embeddings: (B, K) class embeddings for a conditional critic; must be None
      for an unconditional one.

  Returns:
    (B,) scores.

  Raises:
    ConfigError: when embeddings are missing for a conditional critic or given
      to an unconditional one.
  """
  layers = params["layers"]
  if critic_is_conditional(params):
    if embeddings is None:
      raise ConfigError("critic embeddings: expected (B, K) class embeddings for a "
                        "conditional critic, found None")
    h = _apply_concat_dense(layers["layer_0"], {"features": features, "embedding": embeddings})
  else:
    if embeddings is not None:
      raise ConfigError("critic embeddings: expected None for an unconditional critic, "
                        f"found an array of shape {jnp.shape(embeddings)}")
    h = _apply_dense(layers["layer_0"], features)
  return _apply_mlp_tail(layers, h)[:, 0]


# --------------------------------------------------------------------------
# Classifiers.


def _classifier_normal(key, shape):
  return CLASSIFIER_INIT_STD * _standard_normals(key, [shape])[0]


def init_bilinear_classifier(key, *, feature_dim, embedding_dim, bias="vector"):
  """Initialises a bilinear compatibility classifier.

  Args:
    key: PRNG key.
    feature_dim: D.
    embedding_dim: K.
    bias: "vector" for scores (x W + b) . a_c with b in R^K (the reference),
      "scalar" for x W a_c + b with one scalar b.

  Returns:
    {"kernel": (D, K) ~ N(0, 0.02^2), "bias": zeros of shape (K,) or ()}.

  Raises:
    ConfigError: for an unknown bias kind or non-positive sizes.
  """
  if bias not in BILINEAR_BIAS_KINDS:
    raise ConfigError(f"bilinear bias: expected one of {BILINEAR_BIAS_KINDS}, found {bias!r}")
  _check_positive("feature_dim", feature_dim)
  _check_positive("embedding_dim", embedding_dim)
  bias_shape = (embedding_dim,) if bias == "vector" else ()
  return {
      "kernel": _classifier_normal(key, (feature_dim, embedding_dim)),
      "bias": jnp.zeros(bias_shape, jnp.float32),
  }


def apply_bilinear_classifier(params, features, class_embeddings):
  """Bilinear compatibility logits.

  Args:
    params: from `init_bilinear_classifier`; the bias shape selects the form.
    features: (B, D).
    class_embeddings: (C, K), the classes to score.

  Returns:
    (B, C) logits.
  """
  return bilinear_head(params, features @ params["kernel"], class_embeddings)


def bilinear_head(params, projected, class_embeddings):
  """Bilinear logits from the projected features H = features @ kernel.

  Args:
    params: the classifier's parameters; only "bias" is read (the kernel may
      be left out).
    projected: (B, K) features times the kernel.
    class_embeddings: (C, K), the classes to score.

  Returns:
    (B, C) logits, equal to `apply_bilinear_classifier`'s.
  """
  if params["bias"].ndim == 0:
    return projected @ class_embeddings.T + params["bias"]
  return (projected + params["bias"]) @ class_embeddings.T


def init_softmax_classifier(key, *, feature_dim, num_classes):
  """Initialises a linear softmax classifier.

  Args:
    key: PRNG key.
    feature_dim: D.
    num_classes: C.

  Returns:
    {"kernel": (D, C) ~ N(0, 0.02^2), "bias": zeros (C,)}.

  Raises:
    ConfigError: for non-positive sizes.
  """
  _check_positive("feature_dim", feature_dim)
  _check_positive("num_classes", num_classes)
  return {
      "kernel": _classifier_normal(key, (feature_dim, num_classes)),
      "bias": jnp.zeros((num_classes,), jnp.float32),
  }


def apply_softmax_classifier(params, features, class_embeddings=None):
  """Linear softmax logits.

  Args:
    params: from `init_softmax_classifier`.
    features: (B, D).
    class_embeddings: ignored except that, when given, its number of rows must
      equal the classifier's number of classes (the uniform classifier API).

  Returns:
    (B, C) logits.

  Raises:
    ConfigError: when class_embeddings has the wrong number of rows.
  """
  return softmax_head(params, features @ params["kernel"], class_embeddings)


def softmax_head(params, projected, class_embeddings=None):
  """Softmax logits from the projected features H = features @ kernel.

  Args:
    params: the classifier's parameters; only "bias" is read (the kernel may
      be left out).
    projected: (B, C) features times the kernel.
    class_embeddings: as in `apply_softmax_classifier` (only its row count is
      checked).

  Returns:
    (B, C) logits, equal to `apply_softmax_classifier`'s.

  Raises:
    ConfigError: when class_embeddings has the wrong number of rows.
  """
  num_classes = projected.shape[-1]
  if class_embeddings is not None and class_embeddings.shape[0] != num_classes:
    raise ConfigError(f"softmax classifier class_embeddings: expected {num_classes} rows "
                      f"(one per class), found {class_embeddings.shape[0]}")
  return projected + params["bias"]


def get_classifier(kind, *, bilinear_bias="vector") -> tuple[Callable, Callable]:
  """Returns a classifier's (init_fn, apply_fn) with uniform signatures.

  `init_fn(key, *, feature_dim, embedding_dim, num_classes) -> params` (sizes
  the kind does not use are ignored) and `apply_fn(params, features,
  class_embeddings) -> (B, C)` logits with C = class_embeddings.shape[0].

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

    def init_bilinear(key, *, feature_dim, embedding_dim, num_classes=None):
      del num_classes  # The class matrix is an input, not a parameter.
      return init_bilinear_classifier(
          key, feature_dim=feature_dim, embedding_dim=embedding_dim, bias=bilinear_bias)

    return init_bilinear, apply_bilinear_classifier
  if kind == "softmax":

    def init_softmax(key, *, feature_dim, num_classes, embedding_dim=None):
      del embedding_dim  # A softmax classifier does not read embeddings.
      return init_softmax_classifier(key, feature_dim=feature_dim, num_classes=num_classes)

    return init_softmax, apply_softmax_classifier
  raise ConfigError(f"classifier kind: expected one of {CLASSIFIER_KINDS}, found {kind!r}")


def get_classifier_head(kind) -> Callable:
  """The part of a classifier after its kernel: logits from features @ kernel.

  Every classifier kind reads the features only through H = features @
  params["kernel"], so `apply_fn(params, x, E) == head(params, x @
  params["kernel"], E)`; gradient matching uses that to work with the small
  (B, B') Gram matrices of the features instead of D x K kernel gradients
  (`gmn_jax.gram_gradient_matching`).

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
