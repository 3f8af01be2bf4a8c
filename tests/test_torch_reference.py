"""The PyTorch rendition of the reference against the project's JAX functions.

Each side is an independent implementation of the same formulas (the torch
one through `torch.autograd.grad(create_graph=True)`, the project's through
jax.grad or the Gram form), so agreement on identical inputs checks both.
Skipped where torch is not installed (CI).
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.benchmarking import bench_torch
from experiments.benchmarking import torch_final_classifier as torch_final
from experiments.benchmarking import torch_reference as tr
from gmn_jax import classifiers
from gmn_jax import final_classifier
from gmn_jax import gram_gradient_matching
from gmn_jax import losses
from gmn_jax import metrics
from gmn_jax import models
from gmn_jax import specs
from gmn_jax import train_state
from gmn_jax import critic_updates
from gmn_jax import train_step
from gmn_jax.errors import ConfigError
from test_train_support import tiny_config, tiny_dataset
# pylint: enable=g-import-not-at-top,wrong-import-position

_, APPLY_BILINEAR = classifiers.get_classifier("bilinear")


def _t(array, requires_grad=False):
  # np.array copies: JAX's arrays come back read-only, which torch warns about.
  return torch.tensor(np.array(array), dtype=torch.float32, requires_grad=requires_grad)


def _gm_problem(seed=0, n_real=6, n_fake=12, dim=10, k=5, seen=4):
  rng = np.random.default_rng(seed)
  return {"real": np.abs(rng.normal(size=(n_real, dim))).astype(np.float32),
          "fake": np.abs(rng.normal(size=(n_fake, dim))).astype(np.float32),
          # Larger than the reference's 0.02 so that the softmax is far from uniform.
          "kernel": rng.normal(scale=0.3, size=(dim, k)).astype(np.float32),
          "bias": rng.normal(scale=0.1, size=(k,)).astype(np.float32),
          "embeddings": rng.normal(size=(seen, k)).astype(np.float32), "label": 2}


def _jax_gm(problem, implementation):
  """The project's row GM of one class, as a function of the fake features."""
  embeddings = jnp.asarray(problem["embeddings"])
  thetas = {"kernel": jnp.asarray(problem["kernel"])[None],
            "bias": jnp.asarray(problem["bias"])[None]}
  labels = lambda n: jnp.full((n,), problem["label"], jnp.int32)
  real = (jnp.asarray(problem["real"]), labels(problem["real"].shape[0]))

  def of_fake(fake):
    fake_batch = (fake, labels(fake.shape[0]))
    if implementation == "gram":
      head = classifiers.get_classifier_head("bilinear")
      head_loss = lambda theta, projected, y: losses.cross_entropy(
          head(theta, projected, embeddings), y)
      return gram_gradient_matching.linear_head_gradient_matching(
          head_loss, thetas, real, fake_batch, granularity="row")
    loss_fn = lambda theta, batch: losses.classifier_loss(APPLY_BILINEAR, theta, batch[0],
                                                          batch[1], embeddings)
    return losses.gradient_matching(loss_fn, thetas, real, fake_batch, granularity="row")

  return jax.jit(jax.value_and_grad(of_fake))(jnp.asarray(problem["fake"]))


@pytest.mark.parametrize("implementation", ["autodiff", "gram"])
@pytest.mark.parametrize("real_create_graph", [True, False])
def test_gm_distance_and_its_fake_gradient_equal_the_projects(implementation,
                                                                real_create_graph):
  problem = _gm_problem()
  value, grad = _jax_gm(problem, implementation)
  fake = _t(problem["fake"], requires_grad=True)
  # The torch weight is (K, D), the transpose of the flax kernel.
  distance = tr.gm_class_distance(
      _t(problem["real"]), fake, problem["label"], _t(problem["kernel"].T, True),
      _t(problem["bias"], True), _t(problem["embeddings"]), real_create_graph=real_create_graph)
  distance.backward()
  assert float(value) > 0.05  # Not trivially matched.
  np.testing.assert_allclose(distance.item(), float(value), rtol=1e-5)
  np.testing.assert_allclose(fake.grad.numpy(), np.asarray(grad), rtol=1e-4,
                             atol=1e-6 * np.abs(grad).max())


@pytest.fixture(scope="module")
def tiny_run():
  """A tiny stage-1 run's settings, data, initial state and one generator step's draws."""
  config = tiny_config()
  dataset = tiny_dataset()
  spec = specs.train_spec(config, dataset)
  hyper = specs.hyperparameters(config)
  data = train_state.make_train_data(dataset, spec)
  state = train_state.init_train_state(jax.random.key(0), spec, data)
  thetas, _ = spec.theta_sampler(hyper).sample(state.theta_sampler, jax.random.key(3), 0)
  # Larger than the reference's 0.02 so that the softmax is far from uniform.
  thetas = jax.tree.map(lambda t: 10.0 * t + 0.05, thetas)
  batch = jax.jit(train_step.draw_generator_batch, static_argnums=0)(
      spec, data, jax.random.key(4), thetas)
  return spec, hyper, data, state, batch


def _torch_networks(spec, state):
  generator = tr.LatentNoiseGenerator(spec.embedding_dim, spec.feature_dim, spec.noise_dim,
                                      spec.generator_hidden)
  critic = tr.ConditionalCritic(spec.feature_dim, spec.embedding_dim, spec.critic_hidden)
  tr.load_flax_generator(generator, jax.device_get(state.generator))
  tr.load_flax_critic(critic, jax.device_get(state.critic))
  return generator, critic


@pytest.mark.parametrize("implementation", ["autodiff", "gram"])
def test_generator_step_equals_the_projects_loss_and_gradient(tiny_run, implementation):
  spec, hyper, data, state, batch = tiny_run
  spec = dataclasses.replace(spec, gm_implementation=implementation)
  thetas = batch.thetas
  # Jitted: one compilation instead of many eager ones (the spec is static).
  (loss, aux), grads = jax.jit(jax.value_and_grad(train_step.generator_loss, has_aux=True),
                               static_argnums=1)(state.generator, spec, hyper, state.critic,
                                                 state, data, batch)

  generator, critic = _torch_networks(spec, state)
  critic.requires_grad_(False)
  fake_per_class = spec.gm_fake_repeat * spec.gm_real_per_class
  n = spec.gm_num_classes
  # The project's noise draws, handed to torch: the same fakes on both sides.
  adversarial_noise = models.generator_noise(spec.generator, spec.batch_size, batch.noise_key)
  gm_noise = models.generator_noise(spec.generator, n * fake_per_class, batch.gm_noise_key)
  gm_noise = np.asarray(gm_noise).reshape(n, fake_per_class, spec.noise_dim)
  seen = _t(data.seen_embeddings)
  labels = torch.as_tensor(np.array(batch.labels), dtype=torch.long)
  total = tr.generator_step_backward(
      generator, critic, seen[labels], np.asarray(batch.gm_classes).tolist(),
      [_t(r) for r in np.asarray(batch.gm_real_features)],
      (_t(thetas["kernel"][0].T, True), _t(thetas["bias"][0], True)), seen,
      float(hyper.gm_weight), fake_per_class, adversarial_noise=_t(adversarial_noise),
      gm_noise=[_t(z) for z in gm_noise])
  assert float(aux["gm_loss"]) > 0.05
  np.testing.assert_allclose(total.item(), float(loss), rtol=1e-5)
  named = dict(generator.named_parameters())
  pairs = [("mu.weight", grads["mu"]["kernel"].T), ("logvar.bias", grads["logvar"]["bias"]),
           ("layers.0.weight", grads["layers"]["layer_0"]["kernel"].T),
           ("layers.1.weight", grads["layers"]["layer_1"]["kernel"].T),
           ("layers.1.bias", grads["layers"]["layer_1"]["bias"])]
  for name, expected in pairs:
    expected = np.asarray(expected)
    np.testing.assert_allclose(named[name].grad.numpy(), expected, rtol=1e-3,
                               atol=1e-5 * np.abs(expected).max(), err_msg=name)


def test_critic_loss_and_its_gradient_equal_the_projects_wgan_gp(tiny_run):
  spec, _, _, state, _ = tiny_run
  rng = np.random.default_rng(1)
  batch = 7
  real = np.abs(rng.normal(size=(batch, spec.feature_dim))).astype(np.float32)
  fake = np.abs(rng.normal(size=(batch, spec.feature_dim))).astype(np.float32)
  embeddings = rng.normal(size=(batch, spec.embedding_dim)).astype(np.float32)
  key = jax.random.key(5)
  # The interpolation weights `losses.gradient_penalty` draws from this key.
  weights = jax.random.uniform(key, (batch, 1), jnp.float32)
  critic_loss = jax.jit(jax.value_and_grad(
      lambda params: losses.critic_loss(critic_updates.critic_fn(spec), params, real, fake,
                                        embeddings, key, gp_weight=10.0), has_aux=True))
  (loss, aux), grads = critic_loss(state.critic)

  _, critic = _torch_networks(spec, state)
  torch_loss, wasserstein, penalty = tr.critic_loss(critic, _t(real), _t(fake),
                                                    _t(embeddings), _t(weights), 10.0)
  torch_loss.backward()
  np.testing.assert_allclose(torch_loss.item(), float(loss), rtol=1e-5)
  np.testing.assert_allclose(wasserstein.item(), float(aux["wasserstein"]), rtol=1e-5)
  np.testing.assert_allclose(penalty.item(), float(aux["gradient_penalty"]), rtol=1e-5)
  first = grads["layers"]["layer_0"]
  expected = np.concatenate([first["kernel_features"], first["kernel_embedding"]]).T
  np.testing.assert_allclose(critic.layers[0].weight.grad.numpy(), expected, rtol=1e-4,
                             atol=1e-6 * np.abs(expected).max())
  np.testing.assert_allclose(critic.layers[1].bias.grad.numpy(),
                             np.asarray(grads["layers"]["layer_1"]["bias"]), rtol=1e-4)


def test_per_class_accuracy_equals_the_projects():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 9, size=200)
  predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 9, size=200))
  classes = np.array([1, 3, 5, 8, 11])  # 11 never occurs: left out of the mean.
  expected = metrics.per_class_accuracy(predictions, labels, classes)
  found = torch_final.per_class_accuracy(torch.as_tensor(predictions), torch.as_tensor(labels),
                                         torch.as_tensor(classes), 12)
  np.testing.assert_allclose(found.item(), float(expected), rtol=1e-6)


def test_final_classifier_follows_the_projects_sgd_on_full_batches():
  # One batch per epoch: the shuffling order cannot matter, so both sides
  # take the same SGD steps (momentum, weight decay, per-epoch decay).
  dataset = tiny_dataset()
  config = tiny_config(**{"eval.batch_size": 512, "eval.num_classifier_seeds": 1,
                          "eval.lr": 0.05, "eval.lr_decay": 0.8})
  spec = specs.eval_spec(config)
  key = jax.random.key(7)
  result = final_classifier.train_final_classifier(
      key, dataset.train_features, dataset.train_labels, dataset.class_embeddings, dataset, spec)
  # The initialisation `train_final_classifier` draws for its one seed.
  init_key = jax.random.split(jax.random.split(key, 1)[0])[0]
  init_fn, _ = classifiers.get_classifier("bilinear")
  initial = init_fn(init_key, feature_dim=dataset.feature_dim,
                    embedding_dim=dataset.embedding_dim, num_classes=dataset.num_classes)
  sets = torch_final.EvalSets.from_arrays("cpu", **bench_torch.eval_arrays(dataset))
  settings = torch_final.FinalClassifierSettings(
      epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, lr_decay=spec.lr_decay,
      weight_decay=spec.weight_decay, momentum=spec.momentum, seeds=(0,))
  trained = torch_final.train_final_classifier(
      _t(dataset.train_features), torch.tensor(np.array(dataset.train_labels), dtype=torch.long),
      _t(dataset.class_embeddings), sets, settings, 0,
      initial=(_t(initial["kernel"].T), _t(initial["bias"])))
  expected = np.asarray(result.params["kernel"][0]).T
  np.testing.assert_allclose(trained["weight"].numpy(), expected, rtol=1e-4,
                             atol=1e-6 * np.abs(expected).max())
  names = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")
  jax_curves = np.stack([result.curves[name][0] for name in names], axis=1)
  np.testing.assert_allclose(trained["curves"], jax_curves, atol=1e-3)


def test_reference_stage1_times_finite_iterations_at_tiny_shapes():
  settings = tr.Stage1Settings(feature_dim=12, embedding_dim=5, noise_dim=4,
                               generator_hidden=(8,), critic_hidden=(8,), batch_size=8,
                               n_critic=2, gm_num_classes=2, gm_real_per_class=4)
  rng = np.random.default_rng(3)
  labels = np.repeat(np.arange(3), [3, 5, 6])  # classes below and above 4 examples
  run = tr.ReferenceStage1(settings, np.abs(rng.normal(size=(14, 12))), labels,
                           rng.normal(size=(3, 5)), "cpu")
  row = tr.time_stage1(run, iterations=2, chunks=2)
  assert row["finite"] and len(row["chunk_seconds"]) == 2
  assert 0 < row["ms_per_iteration"] < 1e4 and row["warmup_s"] > 0


def test_bench_compares_both_sides_at_tiny_shapes(tmp_path):
  lines = []
  results = bench_torch.run_comparison(
      tiny_config(), iterations=1, chunks=1, classifier_epochs=1, device="cpu",
      dataset=tiny_dataset(), log=lines.append)
  for side in ("jax", "pytorch"):
    assert results[side]["stage1"]["ms_per_iteration"] > 0
    final = results[side]["final_classifier"]
    assert final["seconds"] > 0 and final["epochs_timed"] == 1
    assert final["projected_s"] == pytest.approx(3 * final["seconds"])  # eval.epochs = 3
  assert results["pytorch"]["stage1"]["finite"]
  assert results["ratios"]["stage1"] > 0 and results["ratios"]["final_classifier"] > 0
  assert results["settings"]["n_critic"] == 2 and results["torch"]["device"] == "cpu"
  table = bench_torch.format_table(results)
  assert "torch/JAX" in table and "nan" not in table
  json.loads(json.dumps(results))  # JSON-ready as it is


def test_bench_refuses_what_the_rendition_does_not_implement():
  with pytest.raises(ConfigError, match="config.gm.classifier: expected 'bilinear'"):
    bench_torch.check_supported(tiny_config(**{"gm.classifier": "softmax"}))
  with pytest.raises(ConfigError, match="--iterations"):
    bench_torch.run_comparison(tiny_config(), iterations=0, chunks=1)


def test_a_missing_torch_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch raises
  with pytest.raises(ConfigError, match="pip install torch"):
    bench_torch.import_torch_reference()


def test_the_binary_reports_a_bad_flag_in_one_line():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmarking.bench_torch",
       "--config=experiments/configs/cub.py", "--iterations=0"], cwd=repo,
      capture_output=True, text=True, timeout=120, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.splitlines() == ["error: --iterations: expected a positive integer, found 0"]
