"""gradient_matching against hand-written references, finite differences and sharding."""

import doctest
import pathlib
import re

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from gmn_jax import classifiers
from gmn_jax import losses
from gmn_jax import models
from gmn_jax.errors import ConfigError

C, D, K, Z, M = 4, 6, 5, 3, 3
N_REAL, N_FAKE = 8, 16
GRANULARITIES = ("row", "tensor", "global")


def _x64():
  """Context manager enabling float64 (restored on exit, so nothing leaks)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


# --------------------------------------------------------------------------
# An independent NumPy reference: closed-form bilinear cross-entropy gradients
# in the reference code's PyTorch layout (weight (K, D), one row per embedding
# dimension) and cosines written out as loops.


def _np_bilinear_grads_torch_layout(weight_kd, bias, x, y, attributes):
  logits = (x @ weight_kd.T + bias) @ attributes.T
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  residual = (e / e.sum(axis=1, keepdims=True) - np.eye(len(attributes))[y]) / len(x)
  return {"weight": attributes.T @ residual.T @ x, "bias": residual.sum(axis=0) @ attributes}


def _np_cosine(r, s, eps):
  r, s = np.ravel(r), np.ravel(s)
  return float(r @ s) / (max(np.linalg.norm(r), eps) * max(np.linalg.norm(s), eps))


def _np_distance(g_real, g_fake, granularity, eps):
  if granularity == "global":
    flat = lambda g: np.concatenate([np.ravel(g["weight"]), np.ravel(g["bias"])])
    return 1.0 - _np_cosine(flat(g_real), flat(g_fake), eps)
  weight_term = (np.mean([_np_cosine(g_real["weight"][k], g_fake["weight"][k], eps)
                          for k in range(g_real["weight"].shape[0])])
                 if granularity == "row" else _np_cosine(g_real["weight"], g_fake["weight"], eps))
  return (1.0 - weight_term) + (1.0 - _np_cosine(g_real["bias"], g_fake["bias"], eps))


def _np_gradient_matching(thetas, real, fake, attributes, granularity, eps=1e-8):
  distances = []
  for m in range(thetas["kernel"].shape[0]):
    weight = np.asarray(thetas["kernel"][m], np.float64).T  # Flax (D, K) -> torch (K, D).
    bias = np.asarray(thetas["bias"][m], np.float64)
    g_real = _np_bilinear_grads_torch_layout(weight, bias, *real, attributes)
    g_fake = _np_bilinear_grads_torch_layout(weight, bias, *fake, attributes)
    distances.append(_np_distance(g_real, g_fake, granularity, eps))
  return np.mean(distances)


# --------------------------------------------------------------------------
# Fixtures. The jitted functions are module-level and shapes are shared across
# tests so that XLA compiles each program once (compiling dominates run time).


def _problem(seed=0, dtype=jnp.float32):
  """Random bilinear thetas (scaled up so the softmax is far from uniform)."""
  rng = np.random.default_rng(seed)
  attributes = rng.normal(size=(C, K))
  thetas = {"kernel": rng.normal(0, 0.5, size=(M, D, K)), "bias": rng.normal(0, 0.5, size=(M, K))}
  real = (rng.uniform(size=(N_REAL, D)), rng.integers(0, C, size=N_REAL))
  fake = (rng.uniform(size=(N_FAKE, D)), rng.integers(0, C, size=N_FAKE))
  cast = lambda t: jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, jnp.int32 if a.dtype.kind == "i" else dtype), t)
  return cast(attributes), cast(thetas), cast(real), cast(fake)


_, _APPLY_BILINEAR = classifiers.get_classifier("bilinear")


def _bilinear_loss_fn(attributes):
  def loss_fn(theta, batch):
    features, labels = batch
    return losses.classifier_loss(_APPLY_BILINEAR, theta, features, labels, attributes)
  return loss_fn


def _generator(hidden_dims, kind="latent_noise", dtype=jnp.float32):
  """(module, params) of a generator, the params cast to `dtype`."""
  module = models.Generator(kind, K, D, Z, hidden_dims, dtype)
  params = models.init_generator(module, jax.random.key(0))
  return module, jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)


def _gm_all_granularities(attributes, thetas, real, fake):
  """(3,) GM values, one per granularity."""
  return jnp.stack([
      losses.gradient_matching(_bilinear_loss_fn(attributes), thetas, real, fake,
                               granularity=g) for g in GRANULARITIES])


_GM_VALUES = jax.jit(_gm_all_granularities)


def _gm_of_features(attributes, thetas, real, fake):
  """GM values with the real and fake features as the (differentiated) inputs."""
  return lambda real_x, fake_x: _gm_all_granularities(
      attributes, thetas, (real_x, real[1]), (fake_x, fake[1]))


# --------------------------------------------------------------------------
# Values.


def test_matches_numpy_reference():
  attributes, thetas, real, fake = _problem(0)
  got = _GM_VALUES(attributes, thetas, real, fake)
  to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)
  for i, granularity in enumerate(GRANULARITIES):
    want = _np_gradient_matching(to_np(thetas), to_np(real), to_np(fake),
                                 np.asarray(attributes, np.float64), granularity)
    np.testing.assert_allclose(got[i], want, rtol=2e-5, err_msg=granularity)
    assert 0.05 < want  # The reference is not trivially zero.
  # Row and tensor differ (one cosine per embedding dimension vs one overall).
  assert abs(got[0] - got[1]) > 1e-3


def test_duplicated_real_batch_gives_zero_distance():
  attributes, thetas, real, _ = _problem(2)
  # Duplicating every example leaves the mean loss, hence its gradient,
  # unchanged (N_FAKE == 2 N_REAL, so the compiled program is reused).
  doubled = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a]), real)
  np.testing.assert_allclose(_GM_VALUES(attributes, thetas, real, doubled), 0.0, atol=1e-6)


def test_row_granularity_on_a_three_axis_leaf_and_a_scalar_leaf():
  """A (2, 3, 4) leaf gives one cosine per index of the last axis."""
  rng = np.random.default_rng(1)
  thetas = {"t": jnp.asarray(rng.normal(size=(2, 2, 3, 4)), jnp.float32),
            "s": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}

  def loss_fn(theta, x):  # 0.5 mean_i <T, X_i>^2 + s * mean_i sum(X_i)
    inner = jnp.einsum("abc,iabc->i", theta["t"], x)
    return 0.5 * jnp.mean(inner**2) + theta["s"] * jnp.mean(jnp.sum(x, axis=(1, 2, 3)))

  real = rng.normal(size=(5, 2, 3, 4))
  fake = rng.normal(size=(7, 2, 3, 4))

  def np_grads(t, x):  # Closed form: mean_i <T, X_i> X_i, and mean_i sum(X_i).
    inner = np.einsum("abc,iabc->i", t, x)
    return np.einsum("i,iabc->abc", inner, x) / len(x), np.mean(x.sum(axis=(1, 2, 3)))

  got = jax.jit(lambda r, f: jnp.stack([
      losses.gradient_matching(loss_fn, thetas, r, f, granularity=g) for g in GRANULARITIES]))(
          jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
  for i, granularity in enumerate(GRANULARITIES):
    want = []
    for m in range(2):
      (r_t, r_s), (f_t, f_s) = (np_grads(np.asarray(thetas["t"][m], np.float64), b)
                                for b in (real, fake))
      if granularity == "global":
        want.append(1 - _np_cosine(np.append(r_t, r_s), np.append(f_t, f_s), 1e-8))
        continue
      if granularity == "row":
        t_term = np.mean([_np_cosine(r_t[..., j], f_t[..., j], 1e-8) for j in range(4)])
      else:
        t_term = _np_cosine(r_t, f_t, 1e-8)
      want.append((1 - t_term) + (1 - _np_cosine(r_s, f_s, 1e-8)))
    np.testing.assert_allclose(got[i], np.mean(want), rtol=2e-5, err_msg=granularity)


# --------------------------------------------------------------------------
# Gradients.


def _central_differences(fn, x, h):
  """Partial derivatives of fn (values (n,)) at x, shape (n,) + x.shape, one vmapped batch."""
  flat = jnp.ravel(x)
  steps = h * jnp.eye(flat.size, dtype=flat.dtype)
  along = jax.jit(jax.vmap(lambda step: fn(jnp.reshape(flat + step, x.shape))))
  diffs = (along(steps) - along(-steps)) / (2 * h)  # (x.size, n)
  return jnp.reshape(diffs.T, (-1,) + x.shape)


def test_gradient_wrt_fake_features_matches_finite_differences():
  with _x64():
    attributes, thetas, real, fake = _problem(3, jnp.float64)
    gm = _gm_of_features(attributes, thetas, real, fake)
    jac_real, jac_fake = jax.jit(jax.jacrev(gm, argnums=(0, 1)))(real[0], fake[0])
    assert jac_fake.dtype == jnp.float64 and jac_fake.shape == (3, N_FAKE, D)
    want = _central_differences(lambda x: gm(real[0], x), fake[0], 1e-6)
    np.testing.assert_allclose(jac_fake, want, rtol=1e-6, atol=1e-9)
    assert np.abs(np.asarray(want)).min(axis=(1, 2)).max() > 0
    assert np.abs(np.asarray(want)).max() > 1e-3
    # The real batch is a constant: no gradient flows into it.
    np.testing.assert_array_equal(jac_real, 0.0)


@pytest.mark.parametrize("kind", models.GENERATOR_KINDS)
def test_gradient_wrt_generator_params_matches_finite_differences(kind):
  with _x64():
    attributes, thetas, real, (_, fake_y) = _problem(4, jnp.float64)
    module, generator = _generator((7,), kind, jnp.float64)
    flat, unravel = jax.flatten_util.ravel_pytree(generator)
    noise = jax.random.normal(jax.random.key(1), (N_FAKE, Z), jnp.float64)
    loss_fn = _bilinear_loss_fn(attributes)

    def gm(flat_params):
      fake_x = module.apply({"params": unravel(flat_params)}, attributes[fake_y], noise)
      assert fake_x.dtype == jnp.float64  # Finite differences need float64 throughout.
      return losses.gradient_matching(loss_fn, thetas, real, (fake_x, fake_y))[None]

    got = jax.jit(jax.grad(lambda p: gm(p)[0]))(flat)
    want = _central_differences(gm, flat, 1e-6)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert np.abs(np.asarray(want)).max() > 1e-3


def test_generator_gradient_is_second_order_only_through_the_fake_side():
  """jax.grad of the GM loss equals the hand-built vjp through g_s alone."""
  attributes, thetas, real, (fake_x, fake_y) = _problem(5)
  loss_fn = _bilinear_loss_fn(attributes)
  theta = jax.tree_util.tree_map(lambda t: t[:1], thetas)
  single = jax.tree_util.tree_map(lambda t: t[0], theta)

  @jax.jit
  def got_and_want(fake_x):
    got = jax.grad(lambda x: losses.gradient_matching(loss_fn, theta, real, (x, fake_y),
                                                      granularity="global"))(fake_x)
    flat_r = jax.flatten_util.ravel_pytree(jax.grad(loss_fn)(single, real))[0]

    def distance_of_g_s(flat_s):
      return 1 - flat_r @ flat_s / (jnp.linalg.norm(flat_r) * jnp.linalg.norm(flat_s))

    g_s_of_x = lambda x: jax.flatten_util.ravel_pytree(jax.grad(loss_fn)(single, (x, fake_y)))[0]
    g_s, vjp = jax.vjp(g_s_of_x, fake_x)
    return got, vjp(jax.grad(distance_of_g_s)(g_s))[0]

  got, want = got_and_want(fake_x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  assert np.abs(np.asarray(want)).max() > 1e-4


# --------------------------------------------------------------------------
# vmap, per-class aggregation, sharding, tracing.


def test_vmap_over_thetas_equals_a_python_loop():
  attributes, thetas, real, fake = _problem(6)
  value_and_jacobian = jax.jit(lambda t, x: (
      _gm_all_granularities(attributes, t, real, (x, fake[1])),
      jax.jacrev(lambda x: _gm_all_granularities(attributes, t, real, (x, fake[1])))(x)))
  value, jacobian = value_and_jacobian(thetas, fake[0])
  loop = [value_and_jacobian(jax.tree_util.tree_map(lambda t, m=m: t[m:m + 1], thetas), fake[0])
          for m in range(M)]
  np.testing.assert_allclose(value, np.mean([v for v, _ in loop], axis=0), rtol=1e-5)
  np.testing.assert_allclose(jacobian, np.mean([j for _, j in loop], axis=0), rtol=1e-4,
                             atol=1e-7)
  assert np.ptp([v for v, _ in loop]) > 1e-3  # The thetas really differ.


def test_per_class_sums_gradient_matching_over_classes():
  attributes, thetas, _, _ = _problem(7)
  rng = np.random.default_rng(8)
  classes = np.array([2, 0, 3])
  real = (jnp.asarray(rng.uniform(size=(3, N_REAL, D)), jnp.float32),
          jnp.asarray(np.repeat(classes[:, None], N_REAL, axis=1), jnp.int32))
  fake = (jnp.asarray(rng.uniform(size=(3, N_FAKE, D)), jnp.float32),
          jnp.asarray(np.repeat(classes[:, None], N_FAKE, axis=1), jnp.int32))
  loss_fn = _bilinear_loss_fn(attributes)
  got = jax.jit(lambda r, f: losses.per_class_gradient_matching(
      loss_fn, thetas, r, f, granularity="tensor"))(real, fake)
  want = sum(
      _np_gradient_matching(jax.tree_util.tree_map(np.asarray, thetas),
                            (np.asarray(real[0][c]), np.asarray(real[1][c])),
                            (np.asarray(fake[0][c]), np.asarray(fake[1][c])),
                            np.asarray(attributes, np.float64), "tensor") for c in range(3))
  np.testing.assert_allclose(got, want, rtol=2e-5)
  with pytest.raises(ConfigError, match="leading class axis"):
    losses.per_class_gradient_matching(loss_fn, thetas, real,
                                       jax.tree_util.tree_map(lambda a: a[:2], fake))


def test_same_result_on_one_and_four_devices():
  """Per-class GM of a generator, batch axis sharded over 4 devices."""
  attributes, thetas, _, _ = _problem(9)
  module, generator = _generator((16,))
  rng = np.random.default_rng(10)
  n_classes = 2
  real = (jnp.asarray(rng.uniform(size=(n_classes, N_REAL, D)), jnp.float32),
          jnp.asarray(np.repeat([[1], [3]], N_REAL, axis=1), jnp.int32))
  fake_labels = jnp.asarray(np.repeat([[1], [3]], N_FAKE, axis=1), jnp.int32)
  fake_embeddings = attributes[fake_labels]
  noise = jax.random.normal(jax.random.key(1), (n_classes, N_FAKE, Z))
  loss_fn = _bilinear_loss_fn(attributes)

  def gm(params, real, fake_labels, fake_embeddings, noise):
    fake = jax.vmap(lambda a, z: module.apply({"params": params}, a, z))(
        fake_embeddings, noise)
    return losses.per_class_gradient_matching(loss_fn, thetas, real, (fake, fake_labels))

  step = jax.jit(jax.value_and_grad(gm))
  inputs = (real, fake_labels, fake_embeddings, noise)
  want_value, want_grads = step(generator, *inputs)
  assert want_value > 0.05

  for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
    mesh = jax.make_mesh((4,), ("data",), axis_types=(axis_type,))
    sharded = jax.device_put(inputs, NamedSharding(mesh, P(None, "data")))
    assert len(sharded[0][0].sharding.device_set) == 4
    assert sharded[0][0].addressable_shards[0].data.shape == (n_classes, N_REAL // 4, D)
    # Gradients over a batch sharded on an Explicit mesh need the mesh in
    # context (as for any JAX loss); on an Auto mesh it is optional.
    with jax.set_mesh(mesh):
      got_value, got_grads = step(generator, *sharded)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-5, err_msg=str(axis_type))
    for got, want in zip(jax.tree_util.tree_leaves(got_grads),
                         jax.tree_util.tree_leaves(want_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(axis_type))


def test_jitted_generator_step_does_not_retrace():
  attributes, thetas, real, (_, fake_y) = _problem(11)
  module, generator = _generator((8,))
  loss_fn = _bilinear_loss_fn(attributes)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, thetas, real, key):
    def gm(p):
      fake = (models.generate(module, p, attributes[fake_y], key), fake_y)
      return losses.gradient_matching(loss_fn, thetas, real, fake)
    value, grads = jax.value_and_grad(gm)(params)
    return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), value

  chex.clear_trace_counter()
  values = []
  for i in range(3):
    new_thetas = jax.tree_util.tree_map(lambda t, i=i: t * (1.0 + i), thetas)
    new_real = (real[0] * (1.0 + 0.5 * i), real[1])
    generator, value = step(generator, new_thetas, new_real, jax.random.key(i))
    values.append(float(value))
  assert len(set(values)) == 3 and all(np.isfinite(values))


# --------------------------------------------------------------------------
# Zero gradients, errors, docstring.


def test_zero_gradients_give_finite_values_and_gradients():
  thetas = {"w": jnp.ones((2, 3, 4)), "b": jnp.ones((2, 4))}

  def loss_fn(theta, x):  # Linear in theta: its gradient is zero when x is zero.
    return jnp.mean(x @ theta["w"]) + jnp.mean(x[:, :1] * theta["b"])

  def gm(real, fake):
    return jnp.stack([losses.gradient_matching(loss_fn, thetas, real, fake, granularity=g)
                      for g in GRANULARITIES])

  value_and_jacobian = jax.jit(lambda r, f: (gm(r, f), jax.jacrev(gm, argnums=1)(r, f)))
  x = jnp.asarray(np.random.default_rng(12).normal(size=(5, 3)), jnp.float32)
  zero = jnp.zeros((5, 3))
  for real, fake in [(x, zero), (zero, x), (zero, zero)]:
    value, jacobian = value_and_jacobian(real, fake)
    # A zero gradient has cosine 0 with anything: distance 1 per term (two
    # leaves for "row" and "tensor", one for "global").
    np.testing.assert_allclose(value, [2.0, 2.0, 1.0], rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(jacobian)))


def test_a_dead_generator_gives_finite_gradients():
  """All generated features exactly zero (every output ReLU off)."""
  attributes, thetas, real, (_, fake_y) = _problem(13)
  module, generator = _generator((8,))
  generator["layers"]["layer_1"]["bias"] = jnp.full((D,), -1e3)

  def gm(params):
    fake_x = models.generate(module, params, attributes[fake_y], jax.random.key(1))
    return _gm_all_granularities(attributes, thetas, real, (fake_x, fake_y))

  value, jacobian = jax.jit(lambda p: (gm(p), jax.jacrev(gm)(p)))(generator)
  assert np.all(np.isfinite(np.asarray(value)))
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(jacobian))


@pytest.mark.parametrize("kwargs, thetas, match", [
    ({"granularity": "column"}, {"w": jnp.ones((2, 3))}, "granularity"),
    ({"eps": 0.0}, {"w": jnp.ones((2, 3))}, "eps"),
    ({}, {"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}, "leading axis"),
    ({}, {"w": jnp.ones(())}, "leading axis"),
    ({}, {}, "at least one"),
])
def test_bad_arguments_raise_config_error(kwargs, thetas, match):
  with pytest.raises(ConfigError, match=match):
    losses.gradient_matching(lambda t, x: jnp.sum(x), thetas, jnp.ones(2), jnp.ones(2), **kwargs)


def test_docstring_example_runs():
  finder = doctest.DocTestFinder()
  (test,) = finder.find(losses.gradient_matching, "gradient_matching",
                        globs={"__name__": "docstring_example"})
  assert len(test.examples) > 5
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  result = runner.run(test)
  assert result.failed == 0, f"{result.failed} docstring example lines failed"


def test_docs_show_the_docstring_example():
  """docs/gradient_matching.md carries the same (tested) example."""
  doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "gradient_matching.md"
  if not doc.is_file():
    pytest.skip("docs/ not present (installed package)")
  example_lines = lambda text: [line.strip() for line in text.splitlines()
                                if re.match(r"\s*(>>>|\.\.\.)", line)]
  docstring_example = example_lines(losses.gradient_matching.__doc__)
  doc_example = example_lines(doc.read_text())
  assert docstring_example and docstring_example == doc_example


# --------------------------------------------------------------------------
# Masks: padded batches with their padding masked out are the unpadded batches.


def _masked_bilinear_loss_fn(attributes):
  def loss_fn(theta, batch, mask=None):
    features, labels = batch
    return losses.classifier_loss(_APPLY_BILINEAR, theta, features, labels, attributes, mask)
  return loss_fn


def test_masked_gradient_matching_equals_the_unpadded_batches():
  with _x64():
    attributes, thetas, real, fake = _problem(11, jnp.float64)
    n_real, n_fake = 5, 11
    loss_fn = _masked_bilinear_loss_fn(attributes)
    cut = lambda batch, n: jax.tree_util.tree_map(lambda a: a[:n], batch)

    @jax.jit
    def padded_and_unpadded(fake_x):
      out = {}
      for g in GRANULARITIES:
        masked = lambda x, g=g: losses.gradient_matching(
            loss_fn, thetas, real, (x, fake[1]), granularity=g,
            real_mask=jnp.arange(N_REAL) < n_real, fake_mask=jnp.arange(N_FAKE) < n_fake)
        plain = lambda x, g=g: losses.gradient_matching(
            loss_fn, thetas, cut(real, n_real), cut((x, fake[1]), n_fake), granularity=g)
        out[g] = (jax.value_and_grad(masked)(fake_x), jax.value_and_grad(plain)(fake_x))
      return out

    out = padded_and_unpadded(fake[0])
    to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)
    for g, ((value, grads), (want, want_grads)) in out.items():
      np.testing.assert_allclose(value, want, rtol=1e-10, err_msg=g)
      np.testing.assert_allclose(grads, want_grads, rtol=1e-8, atol=1e-14, err_msg=g)
      np.testing.assert_array_equal(grads[n_fake:], 0.0)
      independent = _np_gradient_matching(to_np(thetas), to_np(cut(real, n_real)),
                                          to_np(cut(fake, n_fake)), np.asarray(attributes), g)
      np.testing.assert_allclose(value, independent, rtol=1e-10, err_msg=g)


def test_masked_per_class_gradient_matching_sums_the_unpadded_classes():
  with _x64():
    attributes, thetas, _, _ = _problem(12, jnp.float64)
    rng = np.random.default_rng(13)
    classes = np.array([2, 0, 3])
    real_counts, repeat = np.array([N_REAL, 5, 1]), 2
    real = (jnp.asarray(rng.uniform(size=(3, N_REAL, D))),
            jnp.asarray(np.repeat(classes[:, None], N_REAL, axis=1), jnp.int32))
    fake_labels = jnp.asarray(np.repeat(classes[:, None], N_FAKE, axis=1), jnp.int32)
    fake_x = jnp.asarray(rng.uniform(size=(3, N_FAKE, D)))
    real_mask = jnp.arange(N_REAL) < real_counts[:, None]
    fake_mask = jnp.arange(N_FAKE) < repeat * real_counts[:, None]
    loss_fn = _masked_bilinear_loss_fn(attributes)

    @jax.jit
    def padded_and_unpadded(fake_x):
      masked = lambda x: losses.per_class_gradient_matching(
          loss_fn, thetas, real, (x, fake_labels), real_mask=real_mask, fake_mask=fake_mask)
      plain = lambda x: sum(
          losses.gradient_matching(
              loss_fn, thetas, (real[0][c, :n], real[1][c, :n]),
              (x[c, :repeat * n], fake_labels[c, :repeat * n]))
          for c, n in enumerate(real_counts))
      return jax.value_and_grad(masked)(fake_x), jax.value_and_grad(plain)(fake_x)

    (value, grads), (want, want_grads) = padded_and_unpadded(fake_x)
    np.testing.assert_allclose(value, want, rtol=1e-10)
    np.testing.assert_allclose(grads, want_grads, rtol=1e-8, atol=1e-14)
    assert np.abs(np.asarray(want_grads)).max() > 1e-3
    with pytest.raises(ConfigError, match="leading class axis"):
      losses.per_class_gradient_matching(loss_fn, thetas, real, (fake_x, fake_labels),
                                         real_mask=real_mask[:2], fake_mask=fake_mask)
