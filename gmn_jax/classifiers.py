"""The classifiers f(x; θ) of gradient matching, L_CLS and stage 2, as `flax.linen` modules.

Layouts:
  bilinear classifier: {"kernel": (D, K), "bias": (K,) or ()}, scores
    (x W + b) . a_c (a vector bias, the reference) or x W a_c + b
  softmax classifier: {"kernel": (D, C), "bias": (C,)}

Initialisation follows the reference: N(0, 0.02^2) kernels and zero biases.
The classifiers always run in float32. `get_classifier` gives a kind's
(init_fn, apply_fn) with uniform signatures, `get_classifier_head` the part
after the kernel (for the Gram form of gradient matching).
"""

import functools
from typing import Callable

import flax.linen as nn

from gmn_jax import models
from gmn_jax.errors import ConfigError

CLASSIFIER_INIT_STD = 0.02
CLASSIFIER_KINDS = ("bilinear", "softmax")
BILINEAR_BIAS_KINDS = ("vector", "scalar")

_classifier_init = nn.initializers.normal(CLASSIFIER_INIT_STD)
_zeros = nn.initializers.zeros_init()
# The parameter initialiser shared with the generator and critic.
_init_params = models._init_params  # pylint: disable=protected-access




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

