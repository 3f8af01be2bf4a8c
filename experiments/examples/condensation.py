r"""Dataset condensation by gradient matching on scikit-learn's digits.

  python -m experiments.examples.condensation [--ipc=1,5,10] [--steps=500] \
      [--num_sets=5] [--seed=0]

A second use of `gmn_jax.losses.gradient_matching`, outside GMN: learn `ipc`
synthetic 8x8 images per digit such that, for randomly drawn classifiers θ,
the gradient of the classification loss on a class's synthetic images points
where the gradient on that class's real images points (Zhao, Mopuri and
Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021). A
classifier trained on those few images alone should then do better than one
trained on as many randomly chosen real images.

For each ipc, --num_sets random real subsets of ipc images per class are
drawn, and each is condensed (all sets in one vmapped, jitted `lax.scan`):

  for each outer step:
    draw M classifiers θ_1..θ_M from their initialisation
    repeat match_steps times:
      L = Σ_c gradient_matching(loss_fn, θ, real batch of class c,
                                synthetic images of class c)
      update the synthetic images with Adam on ∇L
      train every θ_m for theta_steps SGD steps on the synthetic set

A fresh MLP is then trained on each random subset, on the condensed set that
started from it (with the same initialisation) and on all training images,
and the table gives their test accuracy, mean ± std over the sets. The split
is a fixed stratified 70/30 split of the 1,797 images whatever --seed is. A
bad flag prints one line to stderr and exits 2.
"""

import dataclasses
import functools
import time
from typing import Sequence

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
import sklearn.datasets
import sklearn.model_selection

from experiments import cli
from gmn_jax.errors import ConfigError
from gmn_jax.losses import cross_entropy
from gmn_jax.losses import gradient_matching

NUM_CLASSES = 10


def load_digits():
  """(train_x, train_y, test_x, test_y): the fixed stratified 70/30 split.

  Pixels go from 0..16 to [0, 1], then are standardised with one mean and
  one std over all training pixels (the border pixels are always blank).
  """
  images, labels = sklearn.datasets.load_digits(return_X_y=True)
  train_x, test_x, train_y, test_y = sklearn.model_selection.train_test_split(
      images.astype(np.float32) / 16.0, labels.astype(np.int32), test_size=0.3,
      stratify=labels, random_state=0)
  mean, std = train_x.mean(), train_x.std()
  return (train_x - mean) / std, train_y, (test_x - mean) / std, test_y


def init_mlp(key, hidden_dims=(128,), in_dim=64, num_classes=NUM_CLASSES):
  """[{"kernel", "bias"}] per layer: He-normal weights, zero biases; () is linear."""
  widths = (in_dim, *hidden_dims, num_classes)
  keys = jax.random.split(key, len(widths) - 1)
  return [{"kernel": jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in),
           "bias": jnp.zeros((n_out,))}
          for k, n_in, n_out in zip(keys, widths[:-1], widths[1:])]


def apply_mlp(params, x):
  """(B, C) logits of the ReLU MLP."""
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  return x @ params[-1]["kernel"] + params[-1]["bias"]


def classification_loss(params, batch):
  """The loss whose gradients are matched: mean cross-entropy of (x, y)."""
  x, y = batch
  return cross_entropy(apply_mlp(params, x), y)


def condensation_loss(thetas, real_images, synthetic_images):
  """Σ_c gradient_matching(θ, class c's real (C, B, D) and synthetic (C, ipc, D) images)."""

  def one_class(real, synthetic, label):
    return gradient_matching(classification_loss, thetas,
                             (real, jnp.full(real.shape[:1], label)),
                             (synthetic, jnp.full(synthetic.shape[:1], label)))

  labels = jnp.arange(real_images.shape[0])
  return jnp.sum(jax.vmap(one_class)(real_images, synthetic_images, labels))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How `condense` runs: outer_steps draws of num_thetas classifiers, etc."""

  outer_steps: int
  match_steps: int = 10
  theta_steps: int = 20
  num_thetas: int = 4
  real_batch: int = 64
  image_lr: float = 0.05
  theta_lr: float = 0.05
  hidden_dims: tuple = (128,)


def schedule(ipc, image_updates=500):
  """The measured schedule: fresh θ per update at ipc = 1, trajectories above.

  One image per class is fitted by a classifier within a few steps, after
  which its gradient says little; with more images the classifiers train
  for 20 SGD steps on the synthetic set after each of 10 updates per draw.
  """
  match_steps, theta_steps = (1, 0) if ipc == 1 else (10, 20)
  return Schedule(max(1, image_updates // match_steps), match_steps, theta_steps)


def random_subsets(rng, train_y, ipc, num_sets):
  """(num_sets, C * ipc) indices, class-major, ipc distinct images per class."""
  return np.stack([np.concatenate([rng.choice(np.flatnonzero(train_y == c), ipc, replace=False)
                                   for c in range(NUM_CLASSES)]) for _ in range(num_sets)])


def class_pools(x, y):
  """(pools (C, N_max, D) with class c's rows first in row c, counts (C,))."""
  counts = np.bincount(y, minlength=NUM_CLASSES)
  pools = np.zeros((NUM_CLASSES, counts.max(), x.shape[1]), np.float32)
  for c in range(NUM_CLASSES):
    pools[c, :counts[c]] = x[y == c]
  return pools, counts


@functools.partial(jax.jit, static_argnums=4)
def condense(keys, images, pools, counts, config: Schedule):
  """Condenses S sets at once from keys (S,) and images (S, C, ipc, D).

  Returns:
    (images of the same shape, (S, outer_steps) mean matching loss per draw).
  """
  optimizer = optax.adam(config.image_lr)
  loss_and_grad = jax.value_and_grad(condensation_loss, argnums=2)
  sgd = jax.grad(classification_loss)

  def match_step(carry, key):
    images, opt_state, thetas = carry
    index = jax.random.randint(key, (NUM_CLASSES, config.real_batch), 0, counts[:, None])
    real = jnp.take_along_axis(pools, index[..., None], axis=1)
    loss, grads = loss_and_grad(thetas, real, images)
    updates, opt_state = optimizer.update(grads, opt_state)
    images = optax.apply_updates(images, updates)
    flat = (images.reshape(-1, images.shape[-1]),
            jnp.repeat(jnp.arange(NUM_CLASSES), images.shape[1]))

    def sgd_step(_, thetas):
      grads = jax.vmap(sgd, in_axes=(0, None))(thetas, flat)
      return jax.tree_util.tree_map(lambda p, g: p - config.theta_lr * g, thetas, grads)

    thetas = lax.fori_loop(0, config.theta_steps, sgd_step, thetas)
    return (images, opt_state, thetas), loss

  def outer_step(carry, key):
    k_theta, k_match = jax.random.split(key)
    thetas = jax.vmap(lambda k: init_mlp(k, config.hidden_dims))(
        jax.random.split(k_theta, config.num_thetas))
    (images, opt_state, _), losses = lax.scan(
        match_step, (*carry, thetas), jax.random.split(k_match, config.match_steps))
    return (images, opt_state), jnp.mean(losses)

  def one_set(key, images):
    (images, _), history = lax.scan(outer_step, (images, optimizer.init(images)),
                                    jax.random.split(key, config.outer_steps))
    return images, history

  return jax.vmap(one_set)(keys, images)


@functools.partial(jax.jit, static_argnames=("steps", "batch_size"))
def evaluate(keys, sets_x, sets_y, test_x, test_y, steps=300, batch_size=256):
  """(S,) test accuracies of MLPs trained with AdamW, one per key and set (S, N, D)."""
  optimizer = optax.adamw(1e-2, weight_decay=5e-4)

  def train_and_test(key, x, y):
    k_init, k_batches = jax.random.split(key)
    params = init_mlp(k_init, in_dim=x.shape[-1])

    def step(carry, key):
      params, opt_state = carry
      batch = (x, y)
      if x.shape[0] > batch_size:
        index = jax.random.randint(key, (batch_size,), 0, x.shape[0])
        batch = (x[index], y[index])
      grads = jax.grad(classification_loss)(params, batch)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = lax.scan(step, (params, optimizer.init(params)),
                              jax.random.split(k_batches, steps))
    return jnp.mean(jnp.argmax(apply_mlp(params, test_x), -1) == test_y)

  return jax.vmap(train_and_test)(keys, sets_x, sets_y)


def compare(seed, ipcs, image_updates=500, num_sets=5):
  """[(method, ipc, accuracies (num_sets,))]: full data, then random and condensed per ipc."""
  train_x, train_y, test_x, test_y = load_digits()
  smallest = np.bincount(train_y).min()
  if max(ipcs) > smallest:
    raise ConfigError(f"--ipc: expected at most {smallest} (the smallest class), "
                      f"found {max(ipcs)}")
  rng = np.random.default_rng(seed)
  eval_keys = jax.random.split(jax.random.key(seed), num_sets)
  full = evaluate(eval_keys, np.broadcast_to(train_x, (num_sets, *train_x.shape)),
                  np.broadcast_to(train_y, (num_sets, train_y.size)), test_x, test_y)
  rows = [("full data", "all", full)]
  pools, counts = class_pools(train_x, train_y)
  for ipc in ipcs:
    index = random_subsets(rng, train_y, ipc, num_sets)
    labels = train_y[index]
    rows.append(("random real", ipc,
                 evaluate(eval_keys, train_x[index], labels, test_x, test_y)))
    start = train_x[index].reshape(num_sets, NUM_CLASSES, ipc, -1)
    condense_keys = jax.random.split(jax.random.key(rng.integers(2**31)), num_sets)
    condensed, _ = condense(condense_keys, start, pools, counts, schedule(ipc, image_updates))
    rows.append(("condensed", ipc, evaluate(
        eval_keys, condensed.reshape(num_sets, NUM_CLASSES * ipc, -1), labels, test_x,
        test_y)))
  return rows


def format_table(rows):
  """Method, ipc, test accuracy in % (mean ± population std) and n, aligned."""
  lines = [f"{'method':<12} {'ipc':>4} {'test accuracy (%)':>18} {'n':>3}"]
  for method, ipc, accuracies in rows:
    acc = 100.0 * np.asarray(accuracies, np.float64)
    lines.append(f"{method:<12} {ipc:>4} {f'{acc.mean():.1f} ± {acc.std():.1f}':>18} "
                 f"{acc.size:>3}")
  return "\n".join(lines)


def define_flags():
  """Defines the flags; only when run as a program, so imports define none."""
  flags.DEFINE_list("ipc", ["1", "5", "10"], "Synthetic images per class, comma-separated.")
  flags.DEFINE_integer("steps", 500, "Synthetic-image updates per condensation.")
  flags.DEFINE_integer("num_sets", 5, "Random subsets (and condensed sets) per ipc.")
  flags.DEFINE_integer("seed", 0, "Seed of subsets, condensation and evaluation.")


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  values = flags.FLAGS
  start = time.time()
  try:
    ipcs = [int(v) for v in values.ipc if v.strip().isdigit() and int(v) > 0]
    if not ipcs or len(ipcs) != len(values.ipc):
      raise ConfigError(f"--ipc: expected comma-separated positive integers, found {values.ipc}")
    for name in ("steps", "num_sets"):
      if values[name].value < 1:
        raise ConfigError(f"--{name}: expected a positive integer, found {values[name].value}")
    rows = compare(values.seed, ipcs, values.steps, values.num_sets)
  except ConfigError as error:
    cli.fail(error)
  print(format_table(rows))
  print(f"({time.time() - start:.0f} s on {jax.devices()[0].platform})")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
