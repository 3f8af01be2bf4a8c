r"""Cost of one gradient matching evaluation relative to a plain generator pass.

  python -m experiments.benchmarking.bench_gm [--repeats=20] [--num_thetas=1] \
      [--granularity=row] [--classes=5] [--real_per_class=60] [--fake_repeat=2]

At CUB shapes (150 seen classes, 312-d embeddings, 2048-d features, a
latent_noise generator with one 2048-wide hidden layer and 512-d noise, a
bilinear classifier, 5 classes x (60 real + 120 fake)) it times, jitted and
after compilation:

  gm    value and gradient w.r.t. the generator parameters of
        losses.per_class_gradient_matching on G's fake features;
  plain value and gradient of mean(G(a)) on the same 5 x 120 embeddings,

and prints the median milliseconds of each, their ratio, and XLA's
cost-analysis FLOP counts: of the program before optimisation ("HLO", the
same on every backend) and after ("compiled"; on GPU it leaves out the matrix
products XLA hands to cuBLAS, so it undercounts there). The data are random
(timing does not depend on the values). Exits 2 with a one-line message on
bad flags.
"""

import statistics
import time
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from experiments import cli
from gmn_jax import classifiers
from gmn_jax import losses
from gmn_jax import models
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls of each program.")
_NUM_THETAS = flags.DEFINE_integer("num_thetas", 1, "M, sampled classifiers per evaluation.")
_GRANULARITY = flags.DEFINE_string("granularity", "row", "row | tensor | global")
_CLASSES = flags.DEFINE_integer("classes", 5, "GM classes per evaluation.")
_REAL_PER_CLASS = flags.DEFINE_integer("real_per_class", 60, "Real features per GM class.")
_FAKE_REPEAT = flags.DEFINE_integer("fake_repeat", 2, "Fake features per real one.")

SEEN_CLASSES, EMBEDDING_DIM, FEATURE_DIM = 150, 312, 2048
NOISE_DIM, HIDDEN_DIMS = 512, (2048,)
GENERATOR = models.Generator("latent_noise", EMBEDDING_DIM, FEATURE_DIM, NOISE_DIM, HIDDEN_DIMS)


def _flops(stage) -> float:
  """Total FLOPs from XLA's cost analysis (a dict, or a list of them)."""
  analysis = stage.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def _median_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Warm-up (and compilation).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def build_problem(key, *, classes, real_per_class, fake_repeat, num_thetas):
  """Random inputs at CUB shapes.

  Args:
    key: PRNG key.
    classes: GM classes per evaluation.
    real_per_class: real features per class.
    fake_repeat: fake features per real one.
    num_thetas: sampled classifiers M.

  Returns:
    (generator params, inputs dict) for `gm_loss` and `plain_loss`.
  """
  keys = jax.random.split(key, 6)
  generator = models.init_generator(GENERATOR, keys[0])
  init_fn, _ = classifiers.get_classifier("bilinear")
  thetas = jax.vmap(lambda k: init_fn(k, feature_dim=FEATURE_DIM, embedding_dim=EMBEDDING_DIM,
                                      num_classes=SEEN_CLASSES))(
                                          jax.random.split(keys[1], num_thetas))
  embeddings = jax.random.uniform(keys[2], (SEEN_CLASSES, EMBEDDING_DIM))
  embeddings = embeddings / jnp.linalg.norm(embeddings, axis=1, keepdims=True)
  class_ids = jax.random.choice(keys[3], SEEN_CLASSES, (classes,), replace=False)
  real = jax.random.uniform(keys[4], (classes, real_per_class, FEATURE_DIM))
  inputs = {"thetas": thetas, "embeddings": embeddings, "class_ids": class_ids, "real": real,
            "fake_per_class": fake_repeat * real_per_class, "noise_key": keys[5]}
  return generator, inputs


def _fake_embeddings(inputs):
  return jnp.repeat(inputs["embeddings"][inputs["class_ids"]], inputs["fake_per_class"], axis=0)


def gm_loss(generator, inputs, granularity="row"):
  """Per-class GM of the generator's features (the reference's L_GM, unweighted).

  Args:
    generator: generator params.
    inputs: from `build_problem`.
    granularity: the cosine granularity.

  Returns:
    The scalar loss.
  """
  classes, real_per_class = inputs["real"].shape[:2]
  fake_per_class = inputs["fake_per_class"]
  _, apply_bilinear = classifiers.get_classifier("bilinear")
  fake = models.generate(GENERATOR, generator, _fake_embeddings(inputs), inputs["noise_key"])
  fake = fake.reshape(classes, fake_per_class, FEATURE_DIM)
  labels = lambda n: jnp.broadcast_to(inputs["class_ids"][:, None], (classes, n))

  def loss_fn(theta, batch):
    features, batch_labels = batch
    return losses.classifier_loss(apply_bilinear, theta, features, batch_labels,
                                  inputs["embeddings"])

  return losses.per_class_gradient_matching(
      loss_fn, inputs["thetas"], (inputs["real"], labels(real_per_class)),
      (fake, labels(fake_per_class)), granularity=granularity)


def plain_loss(generator, inputs):
  """mean(G(a)) on the same fake embeddings: one plain generator pass.

  Args:
    generator: generator params.
    inputs: from `build_problem`.

  Returns:
    The scalar loss.
  """
  return jnp.mean(models.generate(GENERATOR, generator, _fake_embeddings(inputs),
                                  inputs["noise_key"]))


def run(*, repeats, num_thetas, granularity, classes, real_per_class, fake_repeat):
  """Times both programs and returns the measurements.

  Args:
    repeats: timed calls of each program.
    num_thetas: sampled classifiers M.
    granularity: the GM cosine granularity.
    classes: GM classes per evaluation.
    real_per_class: real features per class.
    fake_repeat: fake features per real one.

  Returns:
    A dict with, for "gm" and "plain": "ms" (median time), "flops" (XLA's
    count on the program before optimisation, the same on every backend) and
    "compiled_flops" (after optimisation; on GPU it leaves out library matrix
    products), and "ratio_*" (gm / plain) of each.

  Raises:
    ConfigError: for non-positive sizes or an unknown granularity.
  """
  for name, value in [("repeats", repeats), ("num_thetas", num_thetas), ("classes", classes),
                      ("real_per_class", real_per_class), ("fake_repeat", fake_repeat)]:
    if value < 1:
      raise ConfigError(f"--{name}: expected a positive integer, found {value}")
  if classes > SEEN_CLASSES:
    raise ConfigError(f"--classes: expected at most {SEEN_CLASSES}, found {classes}")
  if granularity not in losses.GRANULARITIES:
    raise ConfigError(f"--granularity: expected one of {losses.GRANULARITIES}, "
                      f"found {granularity!r}")
  generator, inputs = build_problem(jax.random.key(0), classes=classes,
                                    real_per_class=real_per_class, fake_repeat=fake_repeat,
                                    num_thetas=num_thetas)
  fake_per_class = inputs.pop("fake_per_class")

  def with_static(fn):
    def wrapped(generator, inputs):
      return fn(generator, dict(inputs, fake_per_class=fake_per_class))
    return wrapped

  programs = {
      "gm": jax.jit(jax.value_and_grad(with_static(
          lambda g, i: gm_loss(g, i, granularity=granularity)))),
      "plain": jax.jit(jax.value_and_grad(with_static(plain_loss))),
  }
  results = {}
  for name, program in programs.items():
    lowered = program.lower(generator, inputs)
    results[name] = {"ms": _median_ms(program, (generator, inputs), repeats),
                     "flops": _flops(lowered), "compiled_flops": _flops(lowered.compile())}
  for key in ("ms", "flops", "compiled_flops"):
    results[f"ratio_{key}"] = results["gm"][key] / results["plain"][key]
  return results


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  try:
    results = run(repeats=_REPEATS.value, num_thetas=_NUM_THETAS.value,
                  granularity=_GRANULARITY.value, classes=_CLASSES.value,
                  real_per_class=_REAL_PER_CLASS.value, fake_repeat=_FAKE_REPEAT.value)
  except GMNError as error:
    cli.fail(error)
  fake = _CLASSES.value * _FAKE_REPEAT.value * _REAL_PER_CLASS.value
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"M={_NUM_THETAS.value}, granularity={_GRANULARITY.value}, "
        f"{_CLASSES.value} classes x ({_REAL_PER_CLASS.value} real + "
        f"{_FAKE_REPEAT.value * _REAL_PER_CLASS.value} fake)")
  print(f"{'':36s} {'median ms':>10s} {'HLO GFLOP':>10s} {'compiled GFLOP':>15s}")
  for name, label in [("plain", f"generator fwd+bwd ({fake} samples)"),
                      ("gm", "GM value+grad w.r.t. G")]:
    row = results[name]
    print(f"{label:36s} {row['ms']:10.2f} {row['flops'] / 1e9:10.2f} "
          f"{row['compiled_flops'] / 1e9:15.2f}")
  print(f"{'ratio GM / plain':36s} {results['ratio_ms']:10.2f} {results['ratio_flops']:10.2f} "
        f"{results['ratio_compiled_flops']:15.2f}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
