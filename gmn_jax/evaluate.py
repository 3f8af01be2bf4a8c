"""Stage 2, the reference evaluation protocol: synthesise, pool, train, measure.

`evaluate_generators` evaluates G >= 1 trained generators (or, for the
real-only baseline, none): each synthesises its unseen-class features with
its own key (`gmn_jax.synthesis`), the pooled training sets (real seen
features + synthetic ones) go to ONE jitted program that trains
G × `num_classifier_seeds` final classifiers over all classes
(`gmn_jax.final_classifier`), measured after every epoch and by calibrated
stacking at the end (`gmn_jax.scoring`). See docs/evaluation.md.

Nothing is chosen on the data it reports: the configured counts and epochs
are used and the last epoch is reported. To compare candidates honestly,
evaluate them on a dataset loaded in split mode "validation" and pick one
with `select_on_validation`, which refuses results measured on the test
split.
"""

import dataclasses
import math
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from gmn_jax import final_classifier
from gmn_jax import progress
from gmn_jax import scoring
from gmn_jax import specs
from gmn_jax import synthesis
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError
from gmn_jax.specs import EvalSpec

# The most bytes of pooled training sets (N x D float32 per generator and
# classifier seed) that `evaluate_generators` holds at once; more generators
# are split into batches. 2 GiB holds one generator's five pooled sets of any
# xlsa17 benchmark (0.15-0.4 GB each).
MAX_POOLED_BYTES = 2 ** 31


def generator_batches(num_generators: int, bytes_per_generator: int,
                      max_pooled_bytes: int = MAX_POOLED_BYTES) -> List[Tuple[int, int]]:
  """How `evaluate_generators` splits G generators to bound memory.

  Consecutive batches of at most max(1, max_pooled_bytes //
  bytes_per_generator) generators, in order; only the last may be smaller.
  A single pooled training set larger than the bound still runs, alone.

  Args:
    num_generators: G.
    bytes_per_generator: the size of one generator's pooled training sets
      (N x D x 4 per classifier seed).
    max_pooled_bytes: the most bytes of pooled training sets at once (>= 1).

  Returns:
    [(start, stop), ...] generator index ranges covering range(G).
  """
  size = max(1, int(max_pooled_bytes) // max(1, int(bytes_per_generator)))
  return [(start, min(start + size, num_generators))
          for start in range(0, num_generators, size)]


def evaluate_generators(sample_fn: synthesis.SampleFn, generator_params: Optional[Sequence[Any]],
                        dataset: ZSLDataset, spec: Union[EvalSpec, Sequence[EvalSpec]], keys, *,
                        eval_chunk_size: int = 4096, calibration_gamma=None,
                        max_pooled_bytes: int = MAX_POOLED_BYTES, label: Optional[str] = None
                        ) -> List[final_classifier.FinalClassifierResult]:
  """Stage 2 of G generators (or of the real-only baseline), their classifiers at once.

  Generator g splits keys[g] into (synthesis key, classifier key); its S =
  `spec.num_classifier_seeds` classifier keys are jax.random.split(
  classifier key, S) and classifier seed s trains on its own synthetic set,
  drawn with jax.random.split(synthesis key, S)[s] (the real-only baseline
  has one training set for all its seeds). So generator g's result does not
  depend on the others beside it (to float tolerance), and its spread over
  classifier seeds includes the synthesis noise.

  The G x S pooled training sets (N x D float32 each) live in memory
  together; when they would exceed `max_pooled_bytes`, the generators are
  evaluated in consecutive batches (`generator_batches`), one program per
  batch.

  Args:
    sample_fn: `sample_fn(params, embeddings, key) -> features` (see
      `synthesis.synthesize`); ignored for the real-only baseline.
    generator_params: G generator parameter pytrees, or None for the
      real-only baseline: each key then trains classifiers on the real seen
      features alone, a compatibility model (`final_classifier.
      COMPATIBILITY_KINDS`, what `specs.eval_spec` gives real_only) with
      logits over the seen classes (as the reference), a softmax one over
      all classes (which can never predict an unseen class).
    dataset: the dataset; its test_unseen / test_seen sets are measured (pass
      a validation-split dataset to compare candidates).
    spec: stage 2's settings: one `EvalSpec` for every generator, or one per
      generator differing only in `specs.EVAL_TRACED_FIELDS` (the final
      classifiers' optimiser settings, traced: they train as one program).
    keys: G PRNG keys (a sequence or a stacked array), one per generator.
    eval_chunk_size: the most evaluation rows scored at once.
    calibration_gamma: optional calibrated-stacking constant chosen on other
      data (e.g. `oracle_calibration_gamma` of a validation-split run), the
      same for every generator; adds `scoring.CALIBRATION_NAMES`.
    max_pooled_bytes: the most bytes of pooled training sets held at once.
    label: when given, the final classifiers' epochs are reported under it
      (`progress.LiveProgress`: a line every 30 s, a bar on a terminal).

  Returns:
    G `FinalClassifierResult`s over `spec.num_classifier_seeds` seeds each,
    in the order of keys.

  Raises:
    ConfigError: when the generator parameters and keys disagree in number.
    preemption.Interrupted: on a stop request during the training.
  """
  num_generators = len(keys)
  if generator_params is not None and len(generator_params) != num_generators:
    raise ConfigError(f"keys: expected {len(generator_params)} PRNG keys (one per generator), "
                      f"found {num_generators}")
  per_generator = specs.eval_specs_per_set(spec, num_generators)
  spec = per_generator[0]  # the fields that decide shapes are the same in all
  train_classes = None
  if generator_params is None and spec.classifier in final_classifier.COMPATIBILITY_KINDS:
    # The reference's baseline: logits over the seen classes while training.
    train_classes = dataset.seen_classes
  plan = synthesis.synthetic_plan(dataset, spec)
  num_examples = int(np.shape(dataset.train_labels)[0])
  seeds = spec.num_classifier_seeds
  # Every classifier seed of a generator gets its own synthetic pool, so the
  # spread over them includes the synthesis noise (the reference's
  # train_classifier.py synthesises anew per seed); the real features alone
  # are one pool.
  pools = seeds if generator_params is not None else 1
  if generator_params is not None:
    num_examples += int(plan[1].sum())
  bytes_per_generator = pools * num_examples * int(dataset.feature_dim) * 4
  results = []
  for start, stop in generator_batches(num_generators, bytes_per_generator, max_pooled_bytes):
    features, seed_keys, set_specs = [], [], []
    for g in range(start, stop):
      synth_key, train_key = jax.random.split(keys[g])
      classifier_keys = jax.random.split(train_key, seeds)
      pool_keys = jax.random.split(synth_key, pools)
      params = None if generator_params is None else generator_params[g]
      per_pool = seeds // pools
      for p in range(pools):
        pooled, labels = synthesis.pooled_training_set(sample_fn, params, dataset, plan,
                                                       pool_keys[p])
        features.append(pooled)
        seed_keys.append(classifier_keys[p * per_pool:(p + 1) * per_pool])
        set_specs.append(per_generator[g])
    features = jnp.stack(features)  # the pieces are freed when the list goes
    live = None
    if label is not None:
      live = progress.LiveProgress(
          f"{label} ({stop - start} x {seeds} final classifiers)", spec.epochs, unit="epoch")
    try:
      trained = final_classifier.train_final_classifiers(
          jnp.stack(seed_keys), features, labels, dataset.class_embeddings,
          scoring.EvalSets.from_dataset(dataset), set_specs, train_classes=train_classes,
          eval_chunk_size=eval_chunk_size, calibration_gamma=calibration_gamma, live=live)
    finally:
      if live is not None:
        live.close()
    results.extend(_concatenate_seeds(trained[i:i + pools])
                   for i in range(0, len(trained), pools))
  return results


def _concatenate_seeds(parts: Sequence[final_classifier.FinalClassifierResult]
                       ) -> final_classifier.FinalClassifierResult:
  """One generator's result from those of its pools (classifier seeds in order)."""
  if len(parts) == 1:
    return parts[0]
  concatenate = lambda *values: np.concatenate(values, axis=0)
  first = parts[0]
  return dataclasses.replace(
      first,
      last={name: concatenate(*(p.last[name] for p in parts)) for name in first.last},
      curves={name: concatenate(*(p.curves[name] for p in parts)) for name in first.curves},
      params=jax.tree_util.tree_map(concatenate, *(p.params for p in parts)),
      seen_unseen_curves=(None if first.seen_unseen_curves is None else
                          [c for p in parts for c in p.seen_unseen_curves]))


def select_on_validation(results: Mapping[Any, final_classifier.FinalClassifierResult],
                         metric: str = "gzsl_h"):
  """Picks the candidate whose last-epoch `metric` (mean over seeds) is best.

  Args:
    results: {candidate: result}, each measured on a validation split.
    metric: the metric to maximise.

  Returns:
    The best candidate (the first one on ties).

  Raises:
    ConfigError: when any result was not measured on split "validation" (a
      choice made on the test split would bias the reported numbers), when
      there are no results or the metric is missing.
  """
  if not results:
    raise ConfigError("selection candidates: expected at least one result, found none")
  best, best_value = None, -math.inf
  for candidate, result in results.items():
    if result.split != "validation":
      raise ConfigError(
          f"selection of {candidate!r}: expected a result measured on split "
          f"'validation', found split {result.split!r}")
    if metric not in result.last:
      raise ConfigError(f"selection metric: expected one of {sorted(result.last)}, "
                        f"found {metric!r}")
    value = float(np.mean(result.last[metric]))
    if value > best_value:
      best, best_value = candidate, value
  return best
