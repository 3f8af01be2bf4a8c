r"""The project's stage 1 and final classifier against the authors' PyTorch way, on one device.

  python -m experiments.benchmarking.bench_torch --config=experiments/configs/cub.py \
      [--iterations=5] [--chunks=3] [--classifier_epochs=E | --skip_classifier] \
      [--device=auto|cpu|cuda] [--torch_tf32=true] [--json_out=F] [--config.<field>=...]

Needs PyTorch (`pip install torch`, a CUDA build on a GPU machine; it is not
a dependency of gmn_jax). In one process, on synthetic data with the
config's real shapes (`shapes.benchmark_dataset`), it times:

* stage 1: the project's jitted chunk of --iterations generator iterations
  (`timing.time_stage1`: compiled ahead of time, one untimed warm-up call,
  median of --chunks calls), then
  `torch_reference.ReferenceStage1`, an eager PyTorch rendition of the
  reference's iteration (5 critic steps with the gradient penalty, the
  generator step with per-class GM through
  `torch.autograd.grad(create_graph=True)`), with the same data arrays,
  sizes and hyperparameters: one untimed warm-up chunk, then the median of
  --chunks chunks of --iterations iterations, the device synchronised
  before every clock reading;
* the final classifier: the project's (`timing.time_final_classifier`: all
  classifier seeds vmapped in one program, evaluated every epoch) and
  PyTorch's (`torch_final_classifier.time_final_classifier`: the seeds one after
  another as the reference does, evaluated every epoch), on the same
  pooled set of real seen + synthetic unseen rows, for --classifier_epochs
  epochs (0: config.eval.epochs) projected to config.eval.epochs.

JAX runs on its default device and PyTorch on --device (auto: cuda where
torch sees one, else cpu); the results name both, and a line warns when
they are not the same kind. JAX runs first, so its default preallocation
(75% of GPU memory) leaves PyTorch the rest, which is ample at these sizes.
--torch_tf32 (the default) lets PyTorch's float32 products use TF32 on a
GPU, as JAX's default precision does there; --notorch_tf32 times full
float32 products.

Prints a table (ms per iteration and final-classifier seconds, each side,
and torch / JAX) and writes everything to --json_out. A bad flag or config,
or a missing torch, prints one line to stderr and exits 2.
"""

import dataclasses
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments import benchmark
from experiments import cli
from experiments.benchmarking import shapes
from experiments.benchmarking import timing
from gmn_jax import config as gmn_config
from gmn_jax import specs
from gmn_jax import train_state
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

DEVICES = ("auto", "cpu", "cuda")
# What the PyTorch rendition implements: the reference's CUB / AWA1 model.
SUPPORTED = {"method": "cwgan_gm", "generator.kind": "latent_noise",
             "gm.classifier": "bilinear", "gm.granularity": "row",
             "gm.num_theta_samples": 1, "gm.theta_sampling": "random_init",
             "eval.classifier": "bilinear", "precision": "float32"}

_CONFIG = None
_ITERATIONS = None
_CHUNKS = None
_CLASSIFIER_EPOCHS = None
_SKIP_CLASSIFIER = None
_DEVICE = None
_TORCH_TF32 = None
_JSON_OUT = None


def define_flags() -> None:
  """Defines the flags (only when run as a program, so importing defines none)."""
  # pylint: disable=global-statement
  global _CONFIG, _ITERATIONS, _CHUNKS, _CLASSIFIER_EPOCHS, _SKIP_CLASSIFIER, _DEVICE
  global _TORCH_TF32, _JSON_OUT
  # pylint: enable=global-statement
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A dataset config, e.g. experiments/configs/cub.py.", lock_config=False)
  _ITERATIONS = flags.DEFINE_integer("iterations", 5, "Generator iterations per timed chunk.")
  _CHUNKS = flags.DEFINE_integer("chunks", 3, "Timed chunks after the warm-up (median taken).")
  _CLASSIFIER_EPOCHS = flags.DEFINE_integer(
      "classifier_epochs", 0, "Final-classifier epochs timed (0: config.eval.epochs); "
      "projected to config.eval.epochs.")
  _SKIP_CLASSIFIER = flags.DEFINE_bool("skip_classifier", False,
                                       "Do not time the final classifiers.")
  _DEVICE = flags.DEFINE_enum("device", "auto", DEVICES,
                              "PyTorch's device (auto: cuda if available, else cpu).")
  _TORCH_TF32 = flags.DEFINE_bool("torch_tf32", True,
                                  "Let PyTorch's float32 products use TF32 on a GPU.")
  _JSON_OUT = flags.DEFINE_string("json_out", None, "Where to write the results as JSON.")


def import_torch_reference():
  """The PyTorch renditions, or a ConfigError saying how to get torch.

  Returns:
    The modules (`torch_reference`, `torch_final_classifier`); they import
    torch.

  Raises:
    ConfigError: torch is not installed.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as error:
    raise ConfigError("torch: expected PyTorch for the comparison, found it missing: pip "
                      "install torch (a CUDA build on a GPU machine; gmn_jax does not "
                      "depend on it)") from error
  # pylint: disable=g-import-not-at-top
  from experiments.benchmarking import torch_final_classifier
  from experiments.benchmarking import torch_reference
  # pylint: enable=g-import-not-at-top
  return torch_reference, torch_final_classifier


def check_supported(config: ml_collections.ConfigDict) -> None:
  """Refuses settings the PyTorch rendition does not implement.

  Args:
    config: the validated configuration.

  Raises:
    ConfigError: naming the first unsupported field.
  """
  for path, expected in SUPPORTED.items():
    found = config
    for part in path.split("."):
      found = found[part]
    if found != expected:
      raise ConfigError(f"config.{path}: expected {expected!r} (what the PyTorch rendition "
                        f"implements), found {found!r}")
  if config.critic.conditional is False:
    raise ConfigError("config.critic.conditional: expected a conditional critic (what the "
                      "PyTorch rendition implements), found False")


def torch_stage1_settings(torch_reference, spec: specs.TrainSpec,
                          hyper: specs.Hyperparameters):
  """The `Stage1Settings` of the project's run settings.

  Args:
    torch_reference: the module.
    spec: the project's static settings.
    hyper: its numeric settings.

  Returns:
    The settings (every size and hyperparameter the project's run has).
  """
  def value(x):
    # The project's values are float32 scalars: their shortest decimal (0.999).
    return float(str(np.float32(x)))

  return torch_reference.Stage1Settings(
      feature_dim=spec.feature_dim, embedding_dim=spec.embedding_dim,
      noise_dim=spec.noise_dim, generator_hidden=tuple(spec.generator_hidden),
      critic_hidden=tuple(spec.critic_hidden), batch_size=spec.batch_size,
      n_critic=spec.n_critic, gp_weight=value(hyper.gp_weight),
      lr_generator=value(hyper.lr_generator), lr_critic=value(hyper.lr_critic),
      betas=(value(hyper.adam_b1), value(hyper.adam_b2)), class_balanced=spec.class_balanced,
      gm_num_classes=spec.gm_num_classes, gm_real_per_class=spec.gm_real_per_class,
      gm_fake_repeat=spec.gm_fake_repeat, gm_weight=value(hyper.gm_weight))


def eval_arrays(dataset: ZSLDataset) -> Dict[str, np.ndarray]:
  """The dataset's test sets as `torch_final_classifier.EvalSets.from_arrays` takes them.

  Args:
    dataset: the dataset.

  Returns:
    {field name: numpy array}.
  """
  return {"unseen_features": dataset.test_unseen_features,
          "unseen_labels": dataset.test_unseen_labels,
          "seen_features": dataset.test_seen_features, "seen_labels": dataset.test_seen_labels,
          "seen_classes": dataset.seen_classes, "unseen_classes": dataset.unseen_classes}


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
  if not numerator or not denominator:
    return None
  return numerator / denominator


def run_comparison(config: ml_collections.ConfigDict, *, iterations: int, chunks: int,
                   classifier_epochs: int = 0, skip_classifier: bool = False,
                   device: str = "auto", torch_tf32: bool = True,
                   dataset: Optional[ZSLDataset] = None,
                   log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Times both sides and returns the JSON-ready results.

  Args:
    config: the configuration (a dataset preset plus overrides).
    iterations: generator iterations per timed chunk.
    chunks: timed chunks.
    classifier_epochs: final-classifier epochs timed (0: config.eval.epochs).
    skip_classifier: do not time the final classifiers.
    device: PyTorch's device, one of DEVICES.
    torch_tf32: let PyTorch's float32 products use TF32 on a GPU.
    dataset: the data (None: `shapes.benchmark_dataset(config)`, the real
      shapes; the tests pass a tiny one).
    log: where progress lines go.

  Returns:
    {"config", "machine", "torch", "settings", "jax": {"stage1",
    "final_classifier"}, "pytorch": {...}, "ratios": {"stage1",
    "final_classifier"} (torch / JAX)}.

  Raises:
    ConfigError: bad settings, or torch missing.
  """
  for flag, value in (("iterations", iterations), ("chunks", chunks)):
    if value < 1:
      raise ConfigError(f"--{flag}: expected a positive integer, found {value}")
  if classifier_epochs < 0:
    raise ConfigError(f"--classifier_epochs: expected 0 or more, found {classifier_epochs}")
  if device not in DEVICES:
    raise ConfigError(f"--device: expected one of {DEVICES}, found {device!r}")
  torch_reference, torch_final = import_torch_reference()
  import torch  # pylint: disable=g-import-not-at-top
  gmn_config.validate(config, check_data_dir=False)
  check_supported(config)
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  elif device == "cuda" and not torch.cuda.is_available():
    raise ConfigError("--device: expected a GPU that torch can use, found none "
                      "(torch.cuda.is_available() is False)")
  if device == "cuda":
    torch.set_float32_matmul_precision("high" if torch_tf32 else "highest")
  machine = benchmark.machine_description()
  results = {"config": {"dataset": config.dataset, "method": config.method,
                        "embedding": config.embedding, "precision": config.precision},
             "machine": machine, "torch": torch_reference.describe_device(device)}
  log(f"JAX on {machine['device_kind']} ({machine['backend']}); torch "
      f"{results['torch']['torch_version']} on {results['torch']['device_name']}")
  if (machine["backend"] == "cpu") != (device == "cpu"):
    log(f"note: JAX runs on {machine['backend']} and torch on {device}: not the same device")

  dataset = shapes.benchmark_dataset(config) if dataset is None else dataset
  spec = specs.train_spec(config, dataset)
  hyper = specs.hyperparameters(config)
  settings = torch_stage1_settings(torch_reference, spec, hyper)
  # Every size and hyperparameter, the same on both sides.
  results["settings"] = {"num_train": int(dataset.train_features.shape[0]),
                         "num_seen": spec.num_seen, "num_unseen": spec.num_unseen,
                         **dataclasses.asdict(settings)}
  results["jax"], results["pytorch"], results["ratios"] = {}, {}, {}

  jax_row = timing.time_stage1(spec, dataset, hyper, iterations=iterations, chunks=chunks)
  results["jax"]["stage1"] = jax_row
  log(f"JAX stage 1: {jax_row['ms_per_iteration']:.2f} ms/iteration "
      f"(compile {jax_row['compile_s']:.1f} s)")
  data = train_state.make_train_data(dataset, spec)
  run = torch_reference.ReferenceStage1(settings, data.features, data.labels,
                                        data.seen_embeddings, device)
  torch_row = torch_reference.time_stage1(run, iterations=iterations, chunks=chunks)
  del run
  results["pytorch"]["stage1"] = torch_row
  log(f"torch stage 1: {torch_row['ms_per_iteration']:.2f} ms/iteration "
      f"(warm-up chunk {torch_row['warmup_s']:.1f} s)")
  results["ratios"]["stage1"] = _ratio(torch_row["ms_per_iteration"],
                                       jax_row["ms_per_iteration"])

  if not skip_classifier:
    epochs = classifier_epochs or int(config.eval.epochs)
    jax_final = timing.time_final_classifier(config, dataset, epochs=epochs)
    results["jax"]["final_classifier"] = jax_final
    log(f"JAX final classifier: {jax_final['seconds']:.2f} s for {epochs} epoch(s)")
    features, labels = timing.final_classifier_set(config, dataset)
    final_settings = torch_final.FinalClassifierSettings(
        epochs=epochs, batch_size=config.eval.batch_size, lr=config.eval.lr,
        lr_decay=config.eval.lr_decay, weight_decay=config.eval.weight_decay,
        momentum=config.eval.momentum,
        seeds=_classifier_seeds(torch_final.CLASSIFIER_SEEDS,
                                config.eval.num_classifier_seeds))
    torch_row = torch_final.time_final_classifier(
        features, labels, dataset.class_embeddings, eval_arrays(dataset), final_settings,
        device, projected_epochs=int(config.eval.epochs))
    results["pytorch"]["final_classifier"] = torch_row
    log(f"torch final classifier: {torch_row['seconds']:.2f} s for {epochs} epoch(s)")
    results["ratios"]["final_classifier"] = _ratio(torch_row["projected_s"],
                                                   jax_final["projected_s"])
  return results


def _classifier_seeds(reference_seeds: Sequence[int], count: int) -> Tuple[int, ...]:
  """The reference's classifier seeds, extended (1000 + i) beyond its five."""
  seeds = tuple(reference_seeds[:count])
  return seeds + tuple(1000 + i for i in range(count - len(seeds)))


def format_table(results: Dict[str, Any]) -> str:
  """The printed summary of `run_comparison`'s results.

  Args:
    results: from `run_comparison`.

  Returns:
    A multi-line text.
  """
  m, t, c = results["machine"], results["torch"], results["config"]
  lines = [f"{c['dataset']} {c['method']} ({c['embedding']}): JAX {m['jax_version']} on "
           f"{m['device_kind']} ({m['backend']}), torch {t['torch_version']} on "
           f"{t['device_name']} ({t['device']}, float32 matmul "
           f"{t['float32_matmul_precision']}); load {m['load_average']}",
           f"{'measure':<46} {'JAX':>11} {'PyTorch':>11} {'torch/JAX':>10}"]

  def add(label, jax_value, torch_value, ratio):
    ratio_text = "n/a" if ratio is None else f"{ratio:.2f}"
    lines.append(f"{label:<46} {jax_value:>11.2f} {torch_value:>11.2f} {ratio_text:>10}")

  jax_row, torch_row = results["jax"]["stage1"], results["pytorch"]["stage1"]
  add("stage 1, ms / iteration", jax_row["ms_per_iteration"], torch_row["ms_per_iteration"],
      results["ratios"]["stage1"])
  add("stage 1, CPU ms / iteration", jax_row["cpu_ms_per_iteration"],
      torch_row["cpu_ms_per_iteration"],
      _ratio(torch_row["cpu_ms_per_iteration"], jax_row["cpu_ms_per_iteration"]))
  if "final_classifier" in results["jax"]:
    jax_final = results["jax"]["final_classifier"]
    torch_final = results["pytorch"]["final_classifier"]
    timed = jax_final["epochs_timed"]
    add(f"final classifier, {timed} epoch{'s' * (timed != 1)} (s)", jax_final["seconds"],
        torch_final["seconds"], _ratio(torch_final["seconds"], jax_final["seconds"]))
    add(f"final classifier, {jax_final['epochs']} epochs, projected (s)",
        jax_final["projected_s"], torch_final["projected_s"],
        results["ratios"]["final_classifier"])
    lines.append(f"({jax_final['num_classifier_seeds']} classifier seeds, "
                 f"{jax_final['num_train_rows']} rows; torch: {torch_final['train_s']:.2f} s "
                 f"SGD + {torch_final['eval_s']:.2f} s evaluation)")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  try:
    config = cli.load_config(_CONFIG, example="experiments/configs/cub.py")
    results = run_comparison(
        config, iterations=_ITERATIONS.value, chunks=_CHUNKS.value,
        classifier_epochs=_CLASSIFIER_EPOCHS.value, skip_classifier=_SKIP_CLASSIFIER.value,
        device=_DEVICE.value, torch_tf32=_TORCH_TF32.value,
        log=lambda line: print(line, file=sys.stderr))
    print(format_table(results))
    if _JSON_OUT.value:
      cli.write_results(_JSON_OUT.value, results)
  except GMNError as error:
    cli.fail(error)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
