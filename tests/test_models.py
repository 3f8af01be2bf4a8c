"""The flax networks against NumPy re-implementations, init statistics and dtypes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import classifiers
from gmn_jax import models
from gmn_jax.errors import ConfigError

K, D, Z, B = 5, 8, 4, 6


def _np64(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


def _leaky_relu(x):
  return np.where(x > 0, x, 0.2 * x)


def _joined_kernel(layer, parts=None):
  """A layer's kernel; a first layer in blocks joined along the fan-in in `parts` order."""
  if parts is None:
    return layer["kernel"]
  return np.concatenate([layer[f"kernel_{name}"] for name in parts], axis=0)


def _np_mlp(layers, x, parts=None):
  """A reference MLP over {"layer_i": {"kernel", "bias"}}, LeakyReLU between layers.

  With `parts`, x is the concatenation of those inputs and layer_0 holds one
  kernel block per part.
  """
  for i in range(len(layers)):
    if i:
      x = _leaky_relu(x)
    layer = layers[f"layer_{i}"]
    x = x @ _joined_kernel(layer, parts if i == 0 else None) + layer["bias"]
  return x


def _random_like(tree, seed, scale=0.5):
  """Non-zero biases too, so that a dropped bias term cannot go unnoticed."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(0, scale, np.shape(x)), jnp.float32), tree)


def _inputs(seed, *shapes):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape).astype(np.float32) for shape in shapes]


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


# --------------------------------------------------------------------------
# Forward passes against NumPy.


@pytest.mark.parametrize("hidden_dims", [(), (16, 9)])
@pytest.mark.parametrize("kind", models.GENERATOR_KINDS)
def test_generator_matches_numpy(kind, hidden_dims):
  module = models.Generator(kind, K, D, Z, hidden_dims)
  params = _random_like(models.init_generator(module, jax.random.key(0)), 1)
  a, eps = _inputs(2, (B, K), (B, Z))
  got = module.apply({"params": params}, a, eps)
  p = _np64(params)
  a, eps = a.astype(np.float64), eps.astype(np.float64)
  if kind == "latent_noise":
    mu = a @ p["mu"]["kernel"] + p["mu"]["bias"]
    logvar = a @ p["logvar"]["kernel"] + p["logvar"]["bias"]
    want = np.maximum(_np_mlp(p["layers"], mu + np.exp(0.5 * logvar) * eps), 0)
  else:
    want = np.maximum(_np_mlp(p["layers"], np.concatenate([eps, a], axis=1),
                              ("noise", "embedding")), 0)
  assert got.shape == (B, D) and got.dtype == jnp.float32
  assert (want > 0).any() and (want == 0).any()  # Both sides of the ReLU are tested.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden_dims", [(), (16, 9)])
@pytest.mark.parametrize("conditional", [True, False])
def test_critic_matches_numpy(conditional, hidden_dims):
  module = models.Critic(D, K, hidden_dims, conditional)
  params = _random_like(models.init_critic(module, jax.random.key(0)), 3)
  x, a = _inputs(4, (B, D), (B, K))
  got = module.apply({"params": params}, x, a if conditional else None)
  inputs = np.concatenate([x, a], axis=1) if conditional else x
  parts = ("features", "embedding") if conditional else None
  want = _np_mlp(_np64(params)["layers"], inputs.astype(np.float64), parts)[:, 0]
  assert got.shape == (B,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _np_classifier(kind, bias, p, x, e):
  if kind == "softmax":
    return x @ p["kernel"] + p["bias"]
  if bias == "vector":
    return (x @ p["kernel"] + p["bias"]) @ e.T
  return x @ p["kernel"] @ e.T + p["bias"]


CLASSIFIERS = [("bilinear", "vector"), ("bilinear", "scalar"), ("softmax", "vector")]


@pytest.mark.parametrize("kind,bias", CLASSIFIERS)
def test_classifiers_match_numpy_and_heads(kind, bias):
  num_classes = 3
  init_fn, apply_fn = classifiers.get_classifier(kind, bilinear_bias=bias)
  params = _random_like(init_fn(jax.random.key(0), feature_dim=D, embedding_dim=K,
                                num_classes=num_classes), 5)
  x, e = _inputs(6, (B, D), (num_classes, K))
  got = apply_fn(params, x, e)
  want = _np_classifier(kind, bias, _np64(params), x.astype(np.float64), e.astype(np.float64))
  assert got.shape == (B, num_classes) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The Gram form of GM calls the head without the kernel.
  head = classifiers.get_classifier_head(kind)
  projected = jnp.asarray(x) @ params["kernel"]
  np.testing.assert_allclose(head(params, projected, e), got, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(head({"bias": params["bias"]}, projected, e), got,
                             rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------
# Layouts and initialisation.


def test_param_layouts():
  gen = models.init_generator(models.Generator("latent_noise", K, D, Z, (16,)),
                              jax.random.key(0))
  assert _shapes(gen) == {
      "mu": {"kernel": (K, Z), "bias": (Z,)}, "logvar": {"kernel": (K, Z), "bias": (Z,)},
      "layers": {"layer_0": {"kernel": (Z, 16), "bias": (16,)},
                 "layer_1": {"kernel": (16, D), "bias": (D,)}}}
  gen = models.init_generator(models.Generator("attribute_concat", K, D, Z, ()),
                              jax.random.key(0))
  assert _shapes(gen) == {"layers": {"layer_0": {
      "kernel_noise": (Z, D), "kernel_embedding": (K, D), "bias": (D,)}}}
  critic = models.init_critic(models.Critic(D, K, (16,), True), jax.random.key(0))
  assert _shapes(critic) == {"layers": {
      "layer_0": {"kernel_features": (D, 16), "kernel_embedding": (K, 16), "bias": (16,)},
      "layer_1": {"kernel": (16, 1), "bias": (1,)}}}
  critic = models.init_critic(models.Critic(D, K, (), False), jax.random.key(0))
  assert _shapes(critic) == {"layers": {"layer_0": {"kernel": (D, 1), "bias": (1,)}}}
  for kind, bias in CLASSIFIERS:
    init_fn, _ = classifiers.get_classifier(kind, bilinear_bias=bias)
    params = init_fn(jax.random.key(0), feature_dim=D, embedding_dim=K, num_classes=3)
    want_bias = (3,) if kind == "softmax" else (K,) if bias == "vector" else ()
    out_dim = 3 if kind == "softmax" else K
    assert type(params) is dict  # pylint: disable=unidiomatic-typecheck
    assert _shapes(params) == {"kernel": (D, out_dim), "bias": want_bias}
  for tree in (gen, critic, params):
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(tree))


def test_xavier_initializer_is_the_closed_form_times_a_standard_normal():
  key, shape = jax.random.key(5), (30, 20)
  closed_form = math.sqrt(2.0) * math.sqrt(2.0 / (30 + 20))  # torch's xavier_normal_, gain √2.
  got = models._xavier_init(key, shape)  # pylint: disable=protected-access
  np.testing.assert_allclose(got, closed_form * jax.random.normal(key, shape), rtol=1e-6)


def _check_normal(w, std, rel=0.03):
  """Sample std within `rel` of `std`, mean ~ 0, and normal, not truncated, tails."""
  w = np.asarray(w, np.float64).ravel()
  assert abs(w.std() / std - 1) < rel, (w.std(), std)
  assert abs(w.mean()) < 5 * std / math.sqrt(w.size)
  kurtosis = np.mean((w - w.mean())**4) / w.var()**2
  assert abs(kurtosis - 3.0) < 0.25, kurtosis  # A 2-sigma truncated normal has ~2.4.
  assert np.abs(w).max() > 3.5 * std


def test_generator_and_critic_init_is_xavier_normal_gain_sqrt2():
  k, d, z, h = 300, 250, 200, 350
  gen = models.init_generator(models.Generator("latent_noise", k, d, z, (h,)),
                              jax.random.key(1))
  concat = models.init_generator(models.Generator("attribute_concat", k, d, z, (h,)),
                                 jax.random.key(2))
  critic = models.init_critic(models.Critic(d, k, (h,), True), jax.random.key(3))
  # torch.nn.init.xavier_normal_(w, gain): std = gain * sqrt(2 / (fan_in + fan_out)).
  xavier = lambda fan_in, fan_out: math.sqrt(2.0) * math.sqrt(2.0 / (fan_in + fan_out))
  # A first layer on a concatenation is initialised as one kernel on it: its
  # blocks joined have the whole fan-in's std.
  layers = [(gen["mu"], None, k, z), (gen["logvar"], None, k, z),
            (gen["layers"]["layer_0"], None, z, h), (gen["layers"]["layer_1"], None, h, d),
            (concat["layers"]["layer_0"], ("noise", "embedding"), z + k, h),
            (critic["layers"]["layer_0"], ("features", "embedding"), d + k, h)]
  for layer, parts, fan_in, fan_out in layers:
    kernel = _joined_kernel(layer, parts)
    assert kernel.shape == (fan_in, fan_out)
    _check_normal(kernel, xavier(fan_in, fan_out))
    np.testing.assert_array_equal(layer["bias"], 0.0)
  for part in ("features", "embedding"):  # and so does each block
    _check_normal(critic["layers"]["layer_0"][f"kernel_{part}"], xavier(d + k, h), rel=0.05)
  assert not np.allclose(gen["mu"]["kernel"], gen["logvar"]["kernel"])
  np.testing.assert_array_equal(critic["layers"]["layer_1"]["bias"], 0.0)


@pytest.mark.parametrize("kind", classifiers.CLASSIFIER_KINDS)
def test_classifier_init_is_normal_002(kind):
  init_fn, _ = classifiers.get_classifier(kind)
  params = init_fn(jax.random.key(4), feature_dim=300, embedding_dim=200, num_classes=200)
  _check_normal(params["kernel"], 0.02)
  np.testing.assert_array_equal(params["bias"], 0.0)


def test_init_is_deterministic_per_key():
  module = models.Generator("attribute_concat", K, D, Z, (16,))
  first = models.init_generator(module, jax.random.key(7))
  again = models.init_generator(module, jax.random.key(7))
  other = models.init_generator(module, jax.random.key(8))
  jax.tree_util.tree_map(np.testing.assert_array_equal, first, again)
  assert not np.allclose(first["layers"]["layer_0"]["kernel_noise"],
                         other["layers"]["layer_0"]["kernel_noise"])


# --------------------------------------------------------------------------
# Noise and precision.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_generate_draws_float32_standard_normal_noise(dtype):
  module = models.Generator("latent_noise", K, D, Z, (16,), dtype)
  params = _random_like(models.init_generator(module, jax.random.key(0)), 8, scale=0.3)
  a, = _inputs(9, (B, K))
  key = jax.random.key(10)
  noise = jax.random.normal(key, (B, Z), jnp.float32)
  np.testing.assert_array_equal(models.generator_noise(module, B, key), noise)
  np.testing.assert_array_equal(models.generate(module, params, a, key),
                                module.apply({"params": params}, a, noise))
  other = models.generate(module, params, a, jax.random.key(11))
  assert not np.allclose(other, models.generate(module, params, a, key))


def _bf16(module):
  return module.clone(dtype=jnp.bfloat16)


@pytest.mark.parametrize("kind", models.GENERATOR_KINDS)
def test_bfloat16_generator_is_close_and_keeps_float32_params_and_grads(kind):
  module = models.Generator(kind, K, 32, Z, (64,))
  params = _random_like(models.init_generator(module, jax.random.key(0)), 12, scale=0.3)
  a, = _inputs(13, (16, K))
  key = jax.random.key(14)

  def loss(p, m):
    return jnp.mean(jnp.square(models.generate(m, p, a, key)))

  generate = jax.jit(models.generate, static_argnums=0)
  out32, out16 = (generate(m, params, a, key) for m in (module, _bf16(module)))
  assert out16.dtype == jnp.float32 and out16.shape == out32.shape
  assert (out16 >= 0).all()
  assert 0 < _rel_err(out16, out32) < 2e-2  # Close, and really computed in bfloat16.
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  grads32, grads16 = (grad(params, m) for m in (module, _bf16(module)))
  for g32, g16 in zip(jax.tree_util.tree_leaves(grads32), jax.tree_util.tree_leaves(grads16)):
    assert g16.dtype == jnp.float32
    assert _rel_err(g16, g32) < 5e-2


@pytest.mark.parametrize("conditional", [True, False])
def test_bfloat16_critic_gradient_penalty_is_float32_and_close(conditional):
  module = models.Critic(16, K, (32,), conditional)
  params = models.init_critic(module, jax.random.key(0))
  real, fake, a = _inputs(15, (8, 16), (8, 16), (8, K))
  condition = a if conditional else None

  def penalty(p, m):
    weights = jax.random.uniform(jax.random.key(16), (8, 1), jnp.float32)
    interpolates = weights * real + (1.0 - weights) * fake
    total = lambda x: jnp.sum(m.apply({"params": p}, x, condition))
    input_grads = jax.grad(total)(interpolates)
    assert input_grads.dtype == jnp.float32
    return jnp.mean(jnp.square(jnp.linalg.norm(input_grads, axis=1) - 1.0)), input_grads

  (pen32, ig32), (pen16, ig16) = (jax.jit(penalty, static_argnums=1)(params, m)
                                  for m in (module, _bf16(module)))
  assert 0 < _rel_err(ig16, ig32) < 2e-2
  assert pen16.dtype == jnp.float32 and abs(pen16 - pen32) < 5e-2 * abs(pen32) + 1e-3
  scores = _bf16(module).apply({"params": params}, real, condition)
  assert scores.dtype == jnp.float32 and scores.shape == (8,)
  grads32, grads16 = (jax.jit(jax.grad(lambda p, m=m: penalty(p, m)[0]))(params)
                      for m in (module, _bf16(module)))
  for g32, g16 in zip(jax.tree_util.tree_leaves(grads32), jax.tree_util.tree_leaves(grads16)):
    assert g16.dtype == jnp.float32
    if np.any(g32):  # The biases do not move a piecewise-linear critic's input gradient.
      assert _rel_err(g16, g32) < 1e-1
    else:
      np.testing.assert_array_equal(g16, 0.0)


# --------------------------------------------------------------------------
# Errors, hashing and transformations.


def test_critic_embedding_errors():
  x, a = _inputs(17, (B, D), (B, K))
  conditional = models.Critic(D, K, (), True)
  params = models.init_critic(conditional, jax.random.key(0))
  with pytest.raises(ConfigError, match="expected .* class embeddings .* found None"):
    conditional.apply({"params": params}, x)
  unconditional = models.Critic(D, K, (), False)
  params = models.init_critic(unconditional, jax.random.key(0))
  with pytest.raises(ConfigError, match=r"expected None .* found an array of shape \(6, 5\)"):
    unconditional.apply({"params": params}, x, a)


def test_classifier_functions_are_the_same_objects_on_every_call():
  for kind in classifiers.CLASSIFIER_KINDS:  # Stable identities keep specs hashable and equal.
    assert classifiers.get_classifier(kind) == classifiers.get_classifier(kind)
  assert classifiers.get_classifier("bilinear") != classifiers.get_classifier("bilinear",
                                                                    bilinear_bias="scalar")


def test_classifier_errors():
  with pytest.raises(ConfigError, match="classifier kind"):
    classifiers.get_classifier("mlp")
  with pytest.raises(ConfigError, match="classifier kind"):
    classifiers.get_classifier_head("mlp")
  with pytest.raises(ConfigError, match="bilinear bias"):
    classifiers.get_classifier("bilinear", bilinear_bias="matrix")
  init_fn, apply_fn = classifiers.get_classifier("softmax")
  params = init_fn(jax.random.key(0), feature_dim=D, num_classes=3)
  with pytest.raises(ConfigError, match="expected 3 rows"):
    apply_fn(params, jnp.zeros((2, D)), jnp.zeros((4, K)))


def test_modules_are_hashable_static_jit_arguments():
  module = models.Generator("latent_noise", K, D, Z, [16])  # A list becomes a tuple.
  twin = models.Generator("latent_noise", K, D, Z, (16,))
  assert module == twin and hash(module) == hash(twin) and module.hidden_dims == (16,)
  assert module != _bf16(module) and module != models.Generator("latent_noise", K, D, Z, (17,))
  critic = models.Critic(D, K, [16], True)
  assert critic == models.Critic(D, K, (16,), True) and hash(critic) == hash(critic.clone())
  assert critic != models.Critic(D, K, (16,), False)
  traces = []

  def traced_generate(module, params, a, key):
    traces.append(module)
    return models.generate(module, params, a, key)

  generate = jax.jit(traced_generate, static_argnums=0)
  params = models.init_generator(module, jax.random.key(0))
  a, = _inputs(18, (B, K))
  want = models.generate(module, params, a, jax.random.key(1))
  got = generate(module, params, a, jax.random.key(1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(generate(twin, params, a, jax.random.key(1)), got)
  assert len(traces) == 1  # The equal twin hit the cache.
  generate(_bf16(module), params, a, jax.random.key(1))
  assert len(traces) == 2


@pytest.mark.parametrize("kind,bias", CLASSIFIERS)
def test_classifiers_under_vmap_over_parameter_sets(kind, bias):
  num_samples, num_classes = 4, 3
  init_fn, apply_fn = classifiers.get_classifier(kind, bilinear_bias=bias)
  keys = jax.random.split(jax.random.key(19), num_samples)
  init = lambda k: init_fn(k, feature_dim=D, embedding_dim=K, num_classes=num_classes)
  thetas = jax.jit(jax.vmap(init))(keys)
  out_dim = num_classes if kind == "softmax" else K
  assert thetas["kernel"].shape == (num_samples, D, out_dim)
  x, e = _inputs(20, (B, D), (num_classes, K))
  logits = jax.vmap(apply_fn, (0, None, None))(thetas, x, e)
  for i in range(num_samples):
    theta = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], thetas)
    jax.tree_util.tree_map(np.testing.assert_array_equal, theta, init(keys[i]))
    np.testing.assert_allclose(logits[i], apply_fn(theta, x, e), rtol=1e-6, atol=1e-6)
  assert not np.allclose(thetas["kernel"][0], thetas["kernel"][1])


def test_generator_and_critic_under_vmap():
  gen = models.Generator("attribute_concat", K, D, Z, (16,))
  critic = models.Critic(D, K, (16,), True)
  keys = jax.random.split(jax.random.key(21), 3)
  gens = jax.vmap(lambda k: models.init_generator(gen, k))(keys)
  critics = jax.vmap(lambda k: models.init_critic(critic, k))(keys)
  a, = _inputs(22, (B, K))
  fakes = jax.vmap(lambda p, k: models.generate(gen, p, a, k))(gens, keys)
  scores = jax.vmap(lambda p, x: critic.apply({"params": p}, x, a))(critics, fakes)
  assert fakes.shape == (3, B, D) and scores.shape == (3, B)
  for i in range(3):
    g = models.init_generator(gen, keys[i])
    np.testing.assert_allclose(fakes[i], models.generate(gen, g, a, keys[i]), rtol=1e-6,
                               atol=1e-6)
    c = models.init_critic(critic, keys[i])
    np.testing.assert_allclose(scores[i], critic.apply({"params": c}, fakes[i], a),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,bias", CLASSIFIERS)
def test_gram_gradient_matching_reads_the_flax_kernel(kind, bias):
  # Imported here so that only this test depends on the rest of the library.
  from gmn_jax import gram_gradient_matching  # pylint: disable=g-import-not-at-top
  from gmn_jax import losses  # pylint: disable=g-import-not-at-top
  num_classes = 3
  init_fn, apply_fn = classifiers.get_classifier(kind, bilinear_bias=bias)
  head = classifiers.get_classifier_head(kind)
  thetas = jax.vmap(lambda k: init_fn(k, feature_dim=D, embedding_dim=K,
                                      num_classes=num_classes))(
                                          jax.random.split(jax.random.key(23), 4))
  real_x, fake_x, e = _inputs(24, (6, D), (9, D), (num_classes, K))
  real = (jnp.abs(real_x), jnp.arange(6) % num_classes)
  fake = (jnp.abs(fake_x), jnp.arange(9) % num_classes)

  def loss_fn(theta, batch):
    return losses.classifier_loss(apply_fn, theta, batch[0], batch[1], e)

  def head_loss_fn(theta, projected, labels):
    return losses.cross_entropy(head(theta, projected, e), labels)

  want = losses.gradient_matching(loss_fn, thetas, real, fake)
  got = gram_gradient_matching.linear_head_gradient_matching(head_loss_fn, thetas, real, fake)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
