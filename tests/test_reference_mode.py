"""Stage 1 with `train.sampling = "reference"`: the authors' epoch iterators in the fused step.

The step's draws are checked against the plain Python model of the
reference's iterators (test_reference_sampling.ModelIterator), its masked
losses on short batches against the unmasked losses recomputed on the
sliced batches, and the mode against vmapped seeds, a checkpointed resume
and the config's refusals.

The tiny problem: 6 seen classes of 12 examples (N = 72), batch B = 10, GM
real batches of r = 5. Its epochs therefore end in short batches everywhere:
critic 7 × 10 then 2; adversarial labels (6 classes tiled to 12) 10, 2;
each class's GM batches 5, 5, 2; and with 4 GM classes per iteration the
class cycle of 6 ends in mid-iteration.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import classifiers
from gmn_jax import config as gmn_config
from gmn_jax import losses
from gmn_jax import metric_writers
from gmn_jax import models
from gmn_jax import parallel
from gmn_jax import reference_batches
from gmn_jax import reference_sampling
from gmn_jax import seed_axis
from gmn_jax import specs
from gmn_jax import stage1
from gmn_jax import train_chunk
from gmn_jax import train_state
from gmn_jax import critic_updates
from gmn_jax import train_step
from gmn_jax.errors import ConfigError
from reference_training import assert_trees_close
from test_reference_sampling import ModelIterator
from test_train_support import tiny_config, tiny_dataset

B, R, N_CRITIC, GM_CLASSES = 10, 5, 2, 4
REFERENCE = {"train.sampling": "reference", "train.batch_size": B, "gm.real_per_class": R,
             "train.n_critic": N_CRITIC, "gm.num_classes": GM_CLASSES}
# Optimising the tiny test programs costs more than running them.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _setup(method="cwgan_gm", **overrides):
  config = tiny_config(method, **{**REFERENCE, **overrides})
  dataset = tiny_dataset()
  spec = specs.train_spec(config, dataset)
  data = jax.device_put(train_state.make_train_data(dataset, spec))
  return spec, data, jax.device_put(specs.hyperparameters(config))


def _states(spec, data, seeds):
  return stage1.init_states(spec, data, jnp.stack([train_state.seed_keys(s).init
                                                   for s in seeds]))


def _train_keys(seeds):
  return jnp.stack([train_state.seed_keys(s).train for s in seeds])


@functools.lru_cache(maxsize=None)
def _chunk(spec, num_iterations, num_seeds=1):
  """The jitted chunk without reports: (states, data, hyper, keys, first) -> (states, metrics)."""
  chunk = train_chunk.make_chunk_fn(spec, num_iterations, num_seeds)

  def run(states, data, hyper, keys, first_iteration):
    states, metrics, finite, done = chunk(states, data, hyper, keys, first_iteration,
                                          jnp.int32(num_iterations + 1))
    del finite, done  # every iteration runs; the metrics say whether they are finite
    return states, metrics

  return jax.jit(run, compiler_options=_FAST_COMPILE)


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _assert_trees_equal(got, want):
  got, want = _host(got), _host(want)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------
# (a) A reference-mode chunk trains.


# cwgan_cls and cyclewgan add L_CLS / L_REG, whose masking the short-batch
# test checks; their whole chunks run outside CI.
@pytest.mark.parametrize("method", [
    "cwgan_gm", pytest.param("cwgan_cls", marks=pytest.mark.slow),
    pytest.param("cyclewgan", marks=pytest.mark.slow)])
def test_a_reference_mode_chunk_trains_with_finite_outputs(method):
  spec, data, hyper = _setup(method)
  assert spec.sampling == "reference"
  states = _states(spec, data, (1,))
  sampler = states.batch_sampler
  assert isinstance(sampler, reference_sampling.ReferenceSampler)
  # Every iterator starts exhausted (its first call draws an order).
  np.testing.assert_array_equal(sampler.labels.position, sampler.labels.size)
  new_states, metrics = _chunk(spec, 3)(states, data, hyper, _train_keys((1,)), jnp.int32(0))
  metrics = _host(metrics)
  for name, values in metrics.items():
    assert values.shape == (3, 1) and np.isfinite(values).all(), name
  expected = {"critic_loss", "wasserstein", "gradient_penalty", "critic_grad_norm",
              "adversarial_loss", "generator_loss", "generator_grad_norm"}
  expected |= {"gm_loss"} if spec.variant.gradient_matching else set()
  expected |= {"cls_loss"} if spec.variant.classification_loss else set()
  expected |= {"regression_loss"} if spec.variant.regression_loss else set()
  assert set(metrics) == expected
  assert bool(train_chunk.all_finite(new_states))
  assert int(new_states.iteration[0]) == 3
  # The generator loss is the weighted sum of the terms it reports.
  total = metrics["adversarial_loss"].copy()
  for name, weight in (("gm_loss", hyper.gm_weight), ("cls_loss", hyper.cls_weight),
                       ("regression_loss", hyper.regression_weight)):
    if name in metrics:
      total = total + np.float32(weight) * metrics[name]
  np.testing.assert_allclose(metrics["generator_loss"], total, rtol=1e-5, atol=1e-6)
  # The iterators advanced: 3 label batches (10, 2, 10), 6 critic batches.
  assert int(new_states.batch_sampler.labels.position[0]) == 10
  assert int(new_states.batch_sampler.critic.position[0]) == 60
  assert not np.array_equal(np.asarray(new_states.generator["layers"]["layer_0"]["kernel"]),
                            np.asarray(states.generator["layers"]["layer_0"]["kernel"]))


def test_iid_mode_keeps_no_iterator_state():
  spec, data, _ = _setup(**{"train.sampling": "iid"})
  assert spec.sampling == "iid"
  assert train_state.init_train_state(jax.random.key(0), spec, data).batch_sampler == {}


# --------------------------------------------------------------------------
# (b) The batches the step consumes are those of the reference's iterators.


def _served(position_after, size, batch_size):
  """Valid rows of the batch that left an iterator at `position_after` (short at an epoch's end)."""
  return min(batch_size, size - (position_after - batch_size))


@pytest.mark.parametrize("class_balanced", [True, False])
def test_the_step_consumes_the_batches_of_the_reference_iterators(class_balanced):
  # The iterators' states after each of 12 iterations (a one-iteration chunk
  # called 12 times) against the Python model advanced as main.py advances
  # its iterators: n_critic critic batches, one label batch, n GM classes
  # from the cycle and one batch of each drawn class's own iterator.
  spec, data, hyper = _setup(**{"train.class_balanced": class_balanced})
  chunk = _chunk(spec, 1)
  states, keys = _states(spec, data, (1,)), _train_keys((1,))
  snapshots = [_host(seed_axis.unstack(states, 0).batch_sampler)]
  iterations = 12
  for t in range(iterations):
    states, _ = chunk(states, data, hyper, keys, jnp.int32(t))
    snapshots.append(_host(seed_axis.unstack(states, 0).batch_sampler))

  labels = np.asarray(data.labels)
  num_seen, n = spec.num_seen, spec.gm_num_classes
  rng = np.random.default_rng(0)  # The model's RNG: only its sizes are compared.
  critic_model = ModelIterator(range(labels.size), B, rng)
  label_model = ModelIterator(range(num_seen), B, rng)
  class_models = [ModelIterator(np.flatnonzero(labels == c), R, rng) for c in range(num_seen)]
  drawn = np.zeros(num_seen, bool)
  critic_sizes, label_sizes, gm_sizes, class_sequence = [], [], [], []
  for before, after in zip(snapshots[:-1], snapshots[1:]):
    # Critic: n_critic batches per generator iteration.
    for _ in range(N_CRITIC):
      critic_sizes.append(len(critic_model.next()))
    assert int(after.critic.position) == critic_model.start
    # Adversarial labels: one batch per iteration.
    label_sizes.append((len(label_model.next()),
                        _served(int(after.labels.position), int(after.labels.size), B)))
    assert int(after.labels.position) == label_model.start
    # GM classes: n from the cycle, which restarts (a new order) where it ends.
    cycle_before, cycle_after = before.class_cycle, after.class_cycle
    from_old = max(0, min(n, num_seen - int(cycle_before.position)))
    classes = list(cycle_before.order[int(cycle_before.position):][:from_old])
    if from_old < n:
      assert int(cycle_after.position) == n - from_old
      classes += list(cycle_after.order[:n - from_old])
    else:
      np.testing.assert_array_equal(cycle_after.order, cycle_before.order)
      assert int(cycle_after.position) == int(cycle_before.position) + n
    class_sequence += classes
    # Each drawn class's own iterator advanced once per draw, as its model.
    for c in classes:
      gm_sizes.append(len(class_models[c].next()))
      drawn[c] = True
    for c in range(num_seen):
      want = class_models[c].start if drawn[c] else int(after.class_batches.size[c])
      assert int(after.class_batches.position[c]) == want, c
  # The label batches the positions imply are the model's, short ones included.
  assert [model for model, _ in label_sizes] == [served for _, served in label_sizes]
  assert [model for model, _ in label_sizes] == [10, 2] * (iterations // 2)
  assert critic_sizes[:8] == [10] * 7 + [2]
  assert 2 in gm_sizes and 5 in gm_sizes
  # Every aligned block of S classes of the sequence is one permutation.
  blocks = np.asarray(class_sequence[:len(class_sequence) // num_seen * num_seen])
  for block in blocks.reshape(-1, num_seen):
    np.testing.assert_array_equal(np.sort(block), np.arange(num_seen))


# --------------------------------------------------------------------------
# (c) A short batch's masked loss is the loss of its valid rows alone.


def _prefix_count(mask):
  """The number of valid rows of a mask, checked to be a prefix."""
  mask = np.asarray(mask)
  count = int(mask.sum())
  np.testing.assert_array_equal(mask, np.arange(mask.shape[-1]) < count)
  return count


def _short_generator_batch(spec, data, state, thetas):
  """The first generator step's draws with a short label batch (and a short and a full GM row)."""
  draw = jax.jit(functools.partial(train_step.draw_reference_generator_batch, spec))
  sampler = state.batch_sampler
  for t in range(30):
    batch, sampler = draw(data, jax.random.key(100 + t), thetas, sampler)
    short_labels = int(np.sum(batch.label_mask)) < B
    if not spec.variant.gradient_matching and short_labels:
      return batch
    if spec.variant.gradient_matching and short_labels:
      counts = np.sum(np.asarray(batch.gm_real_mask), axis=1)
      if counts.min() < R and counts.max() == R:
        return batch
  raise AssertionError("no short batch in 30 draws")


def _log_softmax_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return float(-np.mean(log_probs[np.arange(labels.size), labels]))


@pytest.mark.parametrize("method, overrides", [
    ("cwgan_gm", {"gm.implementation": "gram"}),
    ("cwgan_gm", {"gm.implementation": "autodiff"}),
    ("cycle_clswgan", {}),  # L_CLS and L_REG on the adversarial batch.
])
def test_a_short_batch_gives_the_loss_of_its_valid_rows(method, overrides):
  spec, data, hyper = _setup(method, **overrides)
  state = train_state.init_train_state(jax.random.key(0), spec, data)
  thetas = {}
  if spec.variant.gradient_matching:
    thetas, _ = spec.theta_sampler().sample({}, jax.random.key(3), 0)
  batch = _short_generator_batch(spec, data, state, thetas)
  terms = jax.jit(train_step.generator_loss, static_argnums=1)(
      state.generator, spec, hyper, state.critic, state, data, batch)[1]

  # The adversarial batch, generated at its padded size (so every row gets
  # the noise the step gave it), then cut to its valid rows.
  count = _prefix_count(batch.label_mask)
  labels = np.asarray(batch.labels)
  padded_embeddings = data.seen_embeddings[batch.labels]
  padded_fake = models.generate(spec.generator, state.generator, padded_embeddings,
                                batch.noise_key)
  fake, embeddings = padded_fake[:count], padded_embeddings[:count]
  scores = spec.critic.apply({"params": state.critic}, fake, embeddings)
  np.testing.assert_allclose(terms["adversarial_loss"], -np.mean(scores), rtol=1e-5, atol=1e-6)
  # The padding would have changed the loss: the mask is what removes it.
  padded_scores = spec.critic.apply({"params": state.critic}, padded_fake, padded_embeddings)
  assert abs(float(-np.mean(padded_scores)) - float(terms["adversarial_loss"])) > 1e-4
  if spec.variant.classification_loss:
    _, apply_fn = classifiers.get_classifier(spec.cls_classifier)
    logits = apply_fn(state.cls_classifier, fake, data.seen_embeddings)
    np.testing.assert_allclose(terms["cls_loss"], _log_softmax_ce(logits, labels[:count]),
                               rtol=1e-5)
  if spec.variant.regression_loss:
    predicted = np.asarray(fake) @ np.asarray(state.regressor["kernel"]) + np.asarray(
        state.regressor["bias"])
    np.testing.assert_allclose(terms["regression_loss"],
                               np.mean((predicted - np.asarray(embeddings)) ** 2), rtol=1e-5)
  if spec.variant.gradient_matching:
    classes = np.asarray(batch.gm_classes)
    n, f = classes.size, spec.gm_fake_repeat
    gm_fake = models.generate(
        spec.generator, state.generator,
        jnp.repeat(data.seen_embeddings[classes], f * R, axis=0),
        batch.gm_noise_key).reshape(n, f * R, spec.feature_dim)
    _, apply_fn = classifiers.get_classifier(spec.gm_classifier)

    def loss_fn(theta, b):
      return losses.cross_entropy(apply_fn(theta, b[0], data.seen_embeddings), b[1])

    total, data_labels = 0.0, np.asarray(data.labels)
    features = np.asarray(data.features)
    for j, c in enumerate(classes):
      k = _prefix_count(batch.gm_real_mask[j])
      real = np.asarray(batch.gm_real_features[j, :k])
      # The real rows are examples of their class.
      for row in real:
        assert (data_labels[(features == row).all(axis=1)] == c).all()
      total += float(losses.gradient_matching(
          loss_fn, thetas, (real, jnp.full((k,), c)), (gm_fake[j, :f * k], jnp.full((f * k,), c)),
          granularity=spec.gm_granularity))
    np.testing.assert_allclose(terms["gm_loss"], total, rtol=1e-4, atol=1e-6)


def test_a_short_critic_batch_gives_the_loss_of_its_valid_rows():
  spec, data, hyper = _setup("cwgan_gm")
  state = train_state.init_train_state(jax.random.key(0), spec, data)
  draw = jax.jit(functools.partial(reference_batches.critic_batch, spec))
  iterator = state.batch_sampler.critic
  for t in range(8):  # 7 batches of 10, then the epoch's last 2 examples.
    iterator, batch = draw(data, iterator, jax.random.key(t))
  real, embeddings, mask = batch
  count = _prefix_count(mask)
  assert count == 2
  key = jax.random.key(9)
  _, _, metrics = jax.jit(functools.partial(critic_updates.critic_step, spec))(
      hyper, state.critic, state.critic_opt, state.generator, data, key, batch)
  # Independently: critic_step's keys, the fakes and interpolation weights
  # drawn at the padded size, every mean over the 2 valid rows.
  _, noise_key, penalty_key = jax.random.split(key, 3)
  fake = models.generate(spec.generator, state.generator, embeddings, noise_key)[:count]
  real, embeddings = real[:count], embeddings[:count]

  def critic(x):
    return spec.critic.apply({"params": state.critic}, x, embeddings)

  weights = jax.random.uniform(penalty_key, (B, 1))[:count]
  interpolates = weights * real + (1 - weights) * fake
  input_grads = np.asarray(jax.grad(lambda x: jnp.sum(critic(x)))(interpolates))
  penalty = np.mean((np.linalg.norm(input_grads, axis=1) - 1) ** 2)
  wasserstein = np.mean(critic(real)) - np.mean(critic(fake))
  np.testing.assert_allclose(metrics["wasserstein"], wasserstein, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["gradient_penalty"], penalty, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["critic_loss"], -wasserstein + hyper.gp_weight * penalty,
                             rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# (d) Seeds vmapped together equal separate runs.


def test_vmapped_seeds_equal_separate_ones_in_reference_mode():
  spec, data, hyper = _setup("cwgan_gm")
  seeds = (3, 5)
  group, group_metrics = _chunk(spec, 3, 2)(_states(spec, data, seeds), data, hyper,
                                            _train_keys(seeds), jnp.int32(0))
  for i, seed in enumerate(seeds):
    alone, alone_metrics = _chunk(spec, 3)(_states(spec, data, (seed,)), data, hyper,
                                           _train_keys((seed,)), jnp.int32(0))
    grouped, alone = seed_axis.unstack(group, i), seed_axis.unstack(alone, 0)
    _assert_trees_equal(grouped.batch_sampler, alone.batch_sampler)  # integers: exactly
    assert_trees_close(grouped, alone, rtol=1e-4, atol=1e-6)
    for name, values in group_metrics.items():
      np.testing.assert_allclose(values[:, i], alone_metrics[name][:, 0], rtol=1e-4, atol=1e-5,
                                 err_msg=name)
  # The seeds shuffle differently.
  orders = np.asarray(group.batch_sampler.labels.order)
  assert not np.array_equal(orders[0], orders[1])


# --------------------------------------------------------------------------
# (e) A resumed run continues the iterators' epochs.


def test_a_resumed_reference_mode_run_equals_an_uninterrupted_one(tmp_path):
  spec, data, hyper = _setup("cwgan_gm")
  full = specs.Schedule(num_iterations=6, iterations_per_call=3, checkpoint_every=3,
                        log_every=1)
  first_half = specs.Schedule(num_iterations=3, iterations_per_call=3, checkpoint_every=3,
                              log_every=1)

  def run(name, schedule):
    (result,) = stage1.train_generators(
        spec, data, hyper, seeds=[1], schedule=schedule,
        checkpoint_dirs=[str(tmp_path / name / "ckpt")],
        metrics_dirs=[str(tmp_path / name / "metrics")])
    return result

  straight = run("straight", full)
  # The second run stops at its checkpoint after iteration 3 (as a crash
  # right after it would) and is then resumed to 6.
  middle = run("resumed", first_half)
  sampler = middle.state.batch_sampler
  # The checkpoint falls in mid-epoch: labels 10 + 2 + 10 of 12, critic 60 of 72.
  assert int(sampler.labels.position) == 10 and int(sampler.critic.position) == 60
  resumed = run("resumed", full)
  assert resumed.start_iteration == 3
  _assert_trees_equal(resumed.state, straight.state)
  logs = [metric_writers.drop_wall_clock(metric_writers.read_jsonl(
      tmp_path / name / "metrics" / "metrics.jsonl")) for name in ("straight", "resumed")]
  assert logs[0] == logs[1] and [r["step"] for r in logs[0]] == list(range(1, 7))
  # Control: the saved iterators are what makes the tail repeat. From the
  # checkpointed state, fresh (exhausted) ones end elsewhere.
  fresh_sampler = train_state.init_train_state(jax.random.key(0), spec, data).batch_sampler

  def generator_after_the_tail(state):
    # The program the runs used (compiled once, cached), on one seed's stack.
    states = jax.device_put(seed_axis.add_axis(state), jax.local_devices()[0])
    tail = stage1.compiled_chunk(spec, 3, 1)(states, jax.device_put(data), hyper,
                                             _train_keys((1,)), jnp.int32(3), jnp.int32(4))[0]
    return _host(seed_axis.unstack(tail, 0).generator)

  _assert_trees_equal(generator_after_the_tail(middle.state), straight.state.generator)
  fresh = generator_after_the_tail(middle.state._replace(batch_sampler=fresh_sampler))
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(fresh), jax.tree_util.tree_leaves(straight.state.generator)))


@pytest.mark.slow  # 16 s; the masks under a mesh (constrain_batch) and all-reduces
def test_reference_mode_on_four_devices_equals_one_device():
  # Batches split over 4 devices, masks with them: B = 8 (labels 8, 4) and
  # r = 8 real rows per GM class of 13 examples (8, 5).
  config = tiny_config("cwgan_gm", **{**REFERENCE, "train.batch_size": 8,
                                      "gm.real_per_class": 8})
  dataset = tiny_dataset(train_per_class=13)
  spec = specs.train_spec(config, dataset)
  data = train_state.make_train_data(dataset, spec)
  inputs = (_states(spec, data, (3,)), data, specs.hyperparameters(config), _train_keys((3,)))
  chunk = train_chunk.make_chunk_fn(spec, 2)

  def run(states, data, hyper, keys):
    return chunk(states, data, hyper, keys, jnp.int32(0), jnp.int32(3))[0]

  # Two jits: the constraints are read from the mesh context when tracing.
  single = jax.jit(run, compiler_options=_FAST_COMPILE)(*inputs)
  mesh = parallel.make_mesh()
  with parallel.data_parallel(mesh):
    replicated = parallel.replicate(jax.device_get(inputs), mesh)
    compiled = jax.jit(run).lower(*replicated).compile(_FAST_COMPILE)
    sharded = compiled(*replicated)
  assert "all-reduce" in compiled.as_text()  # The batches really are split.
  single, sharded = seed_axis.unstack(_host(single), 0), seed_axis.unstack(_host(sharded), 0)
  _assert_trees_equal(sharded.batch_sampler, single.batch_sampler)
  assert int(single.batch_sampler.labels.position) == 16  # 8, then the short 4
  assert_trees_close(sharded, single, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------
# (f) The config's refusals.


@pytest.mark.parametrize("method", ["wgan_su_gm", "gmmn", "cvae"])
def test_reference_sampling_is_refused_where_the_reference_has_no_iterators(method):
  with pytest.raises(ConfigError, match=r"config\.method, config\.train\.sampling: expected a "
                     r"non-transductive WGAN method for train\.sampling 'reference'") as error:
    gmn_config.validate(tiny_config(method, **{"train.sampling": "reference"}),
                        check_data_dir=False)
  assert "\n" not in str(error.value) and f"method={method!r}" in str(error.value)
  gmn_config.validate(tiny_config(method), check_data_dir=False)  # iid is fine


@pytest.mark.parametrize("method", ["cwgan_gm", "wgan_gm", "cwgan_cls", "fclswgan",
                                    "cyclewgan", "cycle_clswgan", "real_only"])
def test_reference_sampling_is_accepted_for_the_wgan_methods(method):
  gmn_config.validate(tiny_config(method, **{"train.sampling": "reference"}),
                      check_data_dir=False)


def test_an_unknown_sampling_mode_is_refused():
  with pytest.raises(ConfigError, match=r"config\.train\.sampling: expected one of 'iid', "
                     r"'reference', found 'epochs'"):
    gmn_config.validate(tiny_config(**{"train.sampling": "epochs"}), check_data_dir=False)
