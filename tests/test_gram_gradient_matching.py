"""The Gram-matrix gradient matching against the autodiff path it replaces."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from gmn_jax import classifiers
from gmn_jax import config as gmn_config
from gmn_jax import gram_gradient_matching as gram_gm
from gmn_jax import losses
from gmn_jax import models
from gmn_jax import specs
from gmn_jax import train_state
from gmn_jax import train_step
from gmn_jax.errors import ConfigError
from test_train_support import tiny_config, tiny_dataset

D, K, C, Z = 12, 5, 4, 3
N_REAL, N_FAKE = 4, 8
# Optimising the tiny test programs costs more than running them.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
# (classifier kind, bilinear bias form).
CLASSIFIERS = (("bilinear", "vector"), ("bilinear", "scalar"), ("softmax", "vector"))


def _x64():
  """A context in which JAX computes in float64 (the name moved across versions)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _problem(kind, bias, num_thetas, dtype=jnp.float32, seed=0):
  """Class embeddings, M perturbed classifiers, a generator and 3 classes of batches."""
  keys = jax.random.split(jax.random.key(seed), 6)
  embeddings = jax.random.normal(keys[0], (C, K), dtype)
  init_fn, apply_fn = classifiers.get_classifier(kind, bilinear_bias=bias)
  thetas = jax.vmap(lambda k: init_fn(k, feature_dim=D, embedding_dim=K, num_classes=C))(
      jax.random.split(keys[1], num_thetas))
  # Non-zero biases and larger kernels, so that every term matters.
  thetas = jax.tree_util.tree_map(
      lambda x: x.astype(dtype) + 0.3 * jax.random.normal(keys[2], x.shape, dtype), thetas)
  generator = models.init_generator(_generator_module(dtype), keys[3])
  generator = jax.tree_util.tree_map(lambda x: x.astype(dtype), generator)
  classes = jnp.array([0, 2, 3])
  real = (jax.random.uniform(keys[4], (3, N_REAL, D), dtype),
          jnp.broadcast_to(classes[:, None], (3, N_REAL)))
  fake_labels = jnp.broadcast_to(classes[:, None], (3, N_FAKE))
  noise = jax.random.normal(keys[5], (3, N_FAKE, Z), dtype)
  return embeddings, thetas, generator, real, fake_labels, noise, apply_fn


def _generator_module(dtype):
  """The test generator; a float64 one computes (and returns) float64."""
  return models.Generator("latent_noise", K, D, Z, (16,), dtype)


def _fakes(generator, embeddings, fake_labels, noise):
  """(3, N_FAKE, D) fakes in the problem's dtype (that of the embeddings)."""
  module = _generator_module(embeddings.dtype)
  # A one-hot product rather than indexing: a gather of labels sharded on
  # an Explicit mesh would need its output sharding spelled out.
  one_hot = jax.nn.one_hot(fake_labels, C, dtype=embeddings.dtype)
  fakes = jax.vmap(lambda a, z: module.apply({"params": generator}, a, z))(
      one_hot @ embeddings, noise)
  assert fakes.dtype == embeddings.dtype
  return fakes


def _gm_functions(kind, embeddings, apply_fn, granularity):
  """(autodiff, gram), functions of (generator, offset, thetas, real, labels, noise)."""
  head = classifiers.get_classifier_head(kind)

  def loss_fn(theta, batch):
    return losses.cross_entropy(apply_fn(theta, batch[0], embeddings), batch[1])

  def head_loss_fn(theta, projected, labels):
    return losses.cross_entropy(head(theta, projected, embeddings), labels)

  def make(per_class_gm, classifier_loss):
    def gm(generator, offset, thetas, real, fake_labels, noise):
      # The offset's gradient is the gradient w.r.t. the fake features.
      fake = _fakes(generator, embeddings, fake_labels, noise) + offset
      return per_class_gm(classifier_loss, thetas, real, (fake, fake_labels),
                          granularity=granularity)
    return jax.value_and_grad(gm, argnums=(0, 1, 2))

  return (make(losses.per_class_gradient_matching, loss_fn),
          make(gram_gm.per_class_linear_head_gradient_matching, head_loss_fn))


def _every_case(kind, embeddings, apply_fn):
  """One jitted program: {(implementation, granularity, M): (value, gradients)}.

  Gradients are w.r.t. the generator, the fake features and the thetas; M = 1
  uses the first of the 3 thetas. One program rather than 12 saves most of
  the compilation time.
  """
  functions = {granularity: _gm_functions(kind, embeddings, apply_fn, granularity)
               for granularity in losses.GRANULARITIES}

  def every_case(generator, offset, thetas, real, fake_labels, noise):
    out = {}
    for granularity, (autodiff, gram) in functions.items():
      for m in (1, 3):
        some_thetas = jax.tree_util.tree_map(lambda x: x[:m], thetas)  # pylint: disable=cell-var-from-loop
        args = (generator, offset, some_thetas, real, fake_labels, noise)
        out[("autodiff", granularity, m)] = autodiff(*args)
        out[("gram", granularity, m)] = gram(*args)
    return out

  return jax.jit(every_case, compiler_options=_FAST_COMPILE)


def _assert_trees_close(got, want, **tolerances):
  got_leaves, want_leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for g, w in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(g, w, **tolerances)


@pytest.mark.parametrize("kind, bias", CLASSIFIERS)
def test_equals_autodiff_in_float64(kind, bias):
  with _x64():
    embeddings, thetas, generator, real, fake_labels, noise, apply_fn = _problem(
        kind, bias, 3, jnp.float64)
    offset = jnp.zeros((3, N_FAKE, D), jnp.float64)
    results = _every_case(kind, embeddings, apply_fn)(
        generator, offset, thetas, real, fake_labels, noise)
    assert results[("gram", "row", 1)][0].dtype == jnp.float64
  for granularity in losses.GRANULARITIES:
    for m in (1, 3):
      case = f"{granularity}, M={m}"
      want_value, want_grads = results[("autodiff", granularity, m)]
      got_value, got_grads = results[("gram", granularity, m)]
      np.testing.assert_allclose(got_value, want_value, rtol=1e-12, err_msg=case)
      _assert_trees_close(got_grads, want_grads, rtol=1e-9, atol=1e-14, err_msg=case)
      # The comparison is not vacuous.
      assert float(np.max(np.abs(want_grads[1]))) > 1e-4, case
      # A scalar bias gets an exactly zero gradient from a softmax
      # cross-entropy (adding it to every logit changes nothing): its cosine
      # is 0, so each of the 3 classes adds a distance of 1 for it, and the
      # zero-norm rule is exercised.
      if bias == "scalar" and granularity != "global":
        assert float(got_value) >= 3.0, case


def test_zero_fake_and_real_gradients_stay_finite_and_match():
  with _x64():
    embeddings, thetas, generator, real, fake_labels, noise, apply_fn = _problem(
        "bilinear", "vector", 3, jnp.float64, seed=1)
    # Fakes of exactly zero in class 0 (a zero kernel gradient; the offset
    # cancels the generator's output) and real features of zero in class 1.
    real = (real[0].at[1].set(0.0), real[1])
    fakes = _fakes(generator, embeddings, fake_labels, noise)
    offset = jnp.zeros_like(fakes).at[0].set(-fakes[0])
    assert not np.any(np.asarray(fakes[0] + offset[0]))
    results = _every_case("bilinear", embeddings, apply_fn)(
        generator, offset, thetas, real, fake_labels, noise)
  for granularity in losses.GRANULARITIES:
    for m in (1, 3):
      case = f"{granularity}, M={m}"
      want_value, want_grads = results[("autodiff", granularity, m)]
      got_value, got_grads = results[("gram", granularity, m)]
      for leaf in jax.tree_util.tree_leaves((got_value, got_grads)):
        assert np.all(np.isfinite(np.asarray(leaf))), case
      np.testing.assert_allclose(got_value, want_value, rtol=1e-12, err_msg=case)
      _assert_trees_close(got_grads, want_grads, rtol=1e-9, atol=1e-12, err_msg=case)


def test_same_result_on_one_and_four_devices():
  embeddings, thetas, generator, real, fake_labels, noise, apply_fn = _problem(
      "bilinear", "vector", 1, seed=2)
  _, gram = _gm_functions("bilinear", embeddings, apply_fn, "row")
  gram = jax.jit(gram, compiler_options=_FAST_COMPILE)
  offset = jnp.zeros((3, N_FAKE, D))
  inputs = (offset, real, fake_labels, noise)
  want_value, want_grads = gram(generator, inputs[0], thetas, *inputs[1:])
  for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
    mesh = jax.make_mesh((4,), ("data",), axis_types=(axis_type,))
    # Every batch is split over the devices along its examples (axis 1).
    sharded = jax.device_put(inputs, NamedSharding(mesh, P(None, "data")))
    assert sharded[1][0].addressable_shards[0].data.shape == (3, N_REAL // 4, D)
    with jax.set_mesh(mesh):
      got_value, got_grads = gram(generator, sharded[0], thetas, *sharded[1:])
    np.testing.assert_allclose(got_value, want_value, rtol=1e-5, err_msg=str(axis_type))
    _assert_trees_close(got_grads, want_grads, rtol=1e-4, atol=1e-6, err_msg=str(axis_type))


def test_train_iteration_matches_the_autodiff_implementation():
  dataset = tiny_dataset()
  results = {}
  for implementation in gram_gm.IMPLEMENTATIONS:
    config = tiny_config("cwgan_gm", **{"gm.implementation": implementation,
                                        "gm.num_theta_samples": 2, "train.n_critic": 1})
    spec = specs.train_spec(config, dataset)
    assert spec.gm_implementation == implementation
    data = jax.device_put(train_state.make_train_data(dataset, spec))
    state = train_state.init_train_state(jax.random.key(0), spec, data)
    hyper = specs.hyperparameters(config)
    iteration = jax.jit(train_step.train_iteration, static_argnums=0,
                        compiler_options=_FAST_COMPILE)
    results[implementation] = iteration(spec, state, data, hyper, jax.random.key(1))
  (gram_state, gram_metrics), (autodiff_state, autodiff_metrics) = (
      results["gram"], results["autodiff"])
  assert float(autodiff_metrics["gm_loss"]) > 1e-3
  np.testing.assert_allclose(gram_metrics["gm_loss"], autodiff_metrics["gm_loss"], rtol=1e-5)
  np.testing.assert_allclose(gram_metrics["generator_grad_norm"],
                             autodiff_metrics["generator_grad_norm"], rtol=1e-4)
  # One Adam step from the same state: the parameters agree to float32 rounding.
  _assert_trees_close(gram_state.generator, autodiff_state.generator, rtol=1e-5, atol=1e-6)


def _numpy_logits(kind, bias, params, features, embeddings):
  """float64 logits by the documented formulas (classifiers.BilinearClassifier, SoftmaxClassifier)."""
  x, e = np.asarray(features, np.float64), np.asarray(embeddings, np.float64)
  w, b = np.asarray(params["kernel"], np.float64), np.asarray(params["bias"], np.float64)
  if kind == "softmax":
    return x @ w + b  # (B, C): x W + b
  if bias == "vector":
    return (x @ w + b) @ e.T  # (x W + b) . a_c, b in R^K
  return x @ w @ e.T + b  # x W a_c + b, one scalar b


def test_head_after_the_kernel_gives_the_classifier_logits():
  features = jax.random.normal(jax.random.key(3), (6, D))
  embeddings = jax.random.normal(jax.random.key(4), (C, K))
  for kind, bias in CLASSIFIERS:
    init_fn, apply_fn = classifiers.get_classifier(kind, bilinear_bias=bias)
    params = init_fn(jax.random.key(5), feature_dim=D, embedding_dim=K, num_classes=C)
    # Non-zero biases and kernel entries of order 1, so that every term matters.
    params = {"kernel": 50.0 * params["kernel"], "bias": params["bias"] + 0.5}
    want = _numpy_logits(kind, bias, params, features, embeddings)
    assert want.shape == (6, C)
    without_kernel = {"bias": params["bias"]}
    head = classifiers.get_classifier_head(kind)
    got = head(without_kernel, features @ params["kernel"], embeddings)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{kind}, {bias}")
    np.testing.assert_allclose(apply_fn(params, features, embeddings), want, rtol=1e-5,
                               atol=1e-5, err_msg=f"{kind}, {bias}")
  with pytest.raises(ConfigError, match="classifier kind"):
    classifiers.get_classifier_head("mlp")


def test_bad_inputs_raise_one_line_config_errors():
  embeddings, thetas, _, real, fake_labels, noise, _ = _problem("bilinear", "vector", 2)
  head = classifiers.get_classifier_head("bilinear")
  head_loss_fn = lambda theta, h, y: losses.cross_entropy(head(theta, h, embeddings), y)
  real_batch, fake_batch = (real[0][0], real[1][0]), (real[0][1], real[1][1])
  gm = gram_gm.linear_head_gradient_matching
  cases = [
      (dict(thetas={"weight": thetas["kernel"]}), "'kernel' leaf"),
      (dict(thetas={"kernel": thetas["kernel"][0]}), r"\(M, D, O\)"),
      (dict(thetas={**thetas, "bias": thetas["bias"][:1]}), "leading axis"),
      (dict(fake_batch=(fake_batch[0][:, :3], fake_batch[1])), r"\(n, 12\)"),
      (dict(real_batch=real_batch[0]), r"pair \(features, targets\)"),
      (dict(granularity="rows"), "granularity"),
      (dict(eps=0.0), "eps"),
  ]
  for changes, message in cases:
    kwargs = dict(thetas=thetas, real_batch=real_batch, fake_batch=fake_batch)
    kwargs.update(changes)
    settings = {k: kwargs.pop(k) for k in ("granularity", "eps") if k in kwargs}
    with pytest.raises(ConfigError, match=message) as error:
      gm(head_loss_fn, kwargs["thetas"], kwargs["real_batch"], kwargs["fake_batch"], **settings)
    assert "\n" not in str(error.value)
  with pytest.raises(ConfigError, match="leading class axis"):
    gram_gm.per_class_linear_head_gradient_matching(
        head_loss_fn, thetas, real, (noise[:2], fake_labels[:2]))


def test_config_accepts_the_two_implementations_only():
  config = tiny_config()
  assert config.gm.implementation == "gram"  # the documented default
  config.gm.implementation = "autodiff"
  gmn_config.validate(config, check_data_dir=False)
  config.gm.implementation = "symbolic"
  with pytest.raises(ConfigError, match=r"gm\.implementation.*symbolic") as error:
    gmn_config.validate(config, check_data_dir=False)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind, bias", [CLASSIFIERS[0], CLASSIFIERS[2]])
def test_masked_classes_equal_the_unpadded_classes_and_masked_autodiff(kind, bias):
  """Short real batches (and f× as many fakes), padded and masked, as in the reference."""
  real_counts = np.array([N_REAL, 2, 1])
  repeat = N_FAKE // N_REAL
  real_mask = jnp.arange(N_REAL) < real_counts[:, None]
  fake_mask = jnp.arange(N_FAKE) < repeat * real_counts[:, None]
  with _x64():
    embeddings, thetas, generator, real, fake_labels, noise, apply_fn = _problem(
        kind, bias, 3, jnp.float64, seed=3)
    head = classifiers.get_classifier_head(kind)

    def head_loss_fn(theta, projected, labels, mask=None):
      return losses.cross_entropy(head(theta, projected, embeddings), labels, mask)

    def loss_fn(theta, batch, mask=None):
      return losses.classifier_loss(apply_fn, theta, batch[0], batch[1], embeddings, mask)

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    def every_case(fake_x, thetas):
      out = {}
      for g in losses.GRANULARITIES:
        def gram(x, t, g=g):
          return gram_gm.per_class_linear_head_gradient_matching(
              head_loss_fn, t, real, (x, fake_labels), real_mask=real_mask,
              fake_mask=fake_mask, granularity=g)

        def autodiff(x, t, g=g):
          return losses.per_class_gradient_matching(
              loss_fn, t, real, (x, fake_labels), real_mask=real_mask, fake_mask=fake_mask,
              granularity=g)

        def unpadded(x, t, g=g):
          return sum(gram_gm.linear_head_gradient_matching(
              head_loss_fn, t, (real[0][c, :n], real[1][c, :n]),
              (x[c, :repeat * n], fake_labels[c, :repeat * n]), granularity=g)
                     for c, n in enumerate(real_counts))

        out[g] = [jax.value_and_grad(fn, argnums=(0, 1))(fake_x, thetas)
                  for fn in (gram, autodiff, unpadded)]
      return out

    results = every_case(_fakes(generator, embeddings, fake_labels, noise), thetas)
  for granularity, (gram, autodiff, unpadded) in results.items():
    for want, name in ((unpadded, "unpadded"), (autodiff, "autodiff")):
      case = f"{granularity} vs {name}"
      np.testing.assert_allclose(gram[0], want[0], rtol=1e-11, err_msg=case)
      _assert_trees_close(gram[1], want[1], rtol=1e-9, atol=1e-14, err_msg=case)
    fake_grads = np.asarray(gram[1][0])
    assert np.abs(fake_grads).max() > 1e-4
    np.testing.assert_array_equal(fake_grads[~np.asarray(fake_mask)], 0.0)


def test_a_mask_of_the_wrong_shape_raises_a_config_error():
  embeddings, thetas, _, real, _, _, _ = _problem("bilinear", "vector", 2)
  head = classifiers.get_classifier_head("bilinear")
  head_loss_fn = lambda theta, h, y, mask: losses.cross_entropy(
      head(theta, h, embeddings), y, mask)
  batch = (real[0][0], real[1][0])
  with pytest.raises(ConfigError, match=r"real_batch mask: expected shape \(4,\)"):
    gram_gm.linear_head_gradient_matching(head_loss_fn, thetas, batch, batch,
                                          real_mask=jnp.ones(3, bool))
