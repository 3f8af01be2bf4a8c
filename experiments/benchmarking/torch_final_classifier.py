"""An eager PyTorch rendition of the reference's final classifier (stage 2).

Written from the project's specification of the authors' code (its section 5), as the
timing reference of `experiments.benchmarking.bench_torch` (the stage-1
half is `torch_reference`): a bilinear compatibility classifier
(x W^T + b) . a_c over ALL classes, W (K, D) ~ N(0, 0.02^2), b = 0, trained
on the pooled real seen + synthetic unseen features with
torch.optim.SGD (momentum, weight decay) and StepLR (one step per epoch),
mean cross-entropy over shuffled mini-batches whose last one is smaller,
the ZSL T1 and GZSL u, s, H metrics (per-class mean top-1) after every
epoch; the classifier seeds one after another, as the reference does.
"""

import dataclasses
import time
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from experiments.benchmarking.torch_reference import bilinear_logits
from experiments.benchmarking.torch_reference import sample_theta
from experiments.benchmarking.torch_reference import synchronize

# The reference's final-classifier seeds.
CLASSIFIER_SEEDS = (123, 67, 1234, 96, 4444)


@dataclasses.dataclass(frozen=True)
class FinalClassifierSettings:
  """The final bilinear classifier's training (defaults: the reference's CUB).

  Attributes:
    epochs: passes over the training set.
    batch_size: mini-batch size (the last batch of an epoch is smaller).
    lr: SGD learning rate of the first epoch.
    lr_decay: StepLR's factor after every epoch.
    weight_decay: SGD's L2 coefficient.
    momentum: SGD momentum.
    seeds: classifier seeds, trained one after another.
    evaluate_every_epoch: ZSL / GZSL metrics after every epoch.
  """

  epochs: int = 200
  batch_size: int = 256
  lr: float = 0.01
  lr_decay: float = 0.97
  weight_decay: float = 1e-3
  momentum: float = 0.9
  seeds: Tuple[int, ...] = CLASSIFIER_SEEDS
  evaluate_every_epoch: bool = True


class EvalSets(NamedTuple):
  """Test sets on the device, global class ids (long tensors)."""

  unseen_features: torch.Tensor
  unseen_labels: torch.Tensor
  seen_features: torch.Tensor
  seen_labels: torch.Tensor
  seen_classes: torch.Tensor
  unseen_classes: torch.Tensor

  @classmethod
  def from_arrays(cls, device, **arrays) -> "EvalSets":
    """From numpy arrays named as the fields (features float32, the rest int64)."""
    return cls(**{name: torch.as_tensor(
        np.array(arrays[name], np.float32 if name.endswith("features") else np.int64),
        device=device) for name in cls._fields})


def per_class_accuracy(predictions, labels, classes, num_classes: int) -> torch.Tensor:
  """Mean over the `classes` present in `labels` of their top-1 accuracy, in percent.

  Vectorised (bincounts), so an evaluation never waits for the device.

  Args:
    predictions: (N,) predicted global ids.
    labels: (N,) true global ids.
    classes: (C',) the classes to average over.
    num_classes: C, all classes.

  Returns:
    A scalar tensor.
  """
  totals = torch.bincount(labels, minlength=num_classes)[classes]
  hits = torch.bincount(labels, weights=(predictions == labels).float(),
                        minlength=num_classes)[classes]
  present = totals > 0
  accuracy = torch.where(present, hits / totals.clamp(min=1), torch.zeros_like(hits))
  return 100.0 * accuracy.sum() / present.sum()


def gzsl_metrics(weight, bias, class_embeddings, sets: EvalSets) -> torch.Tensor:
  """(ZSL T1, GZSL u, s, H) of a bilinear classifier, as a (4,) tensor in percent."""
  num_classes = class_embeddings.shape[0]
  unseen_scores = bilinear_logits(sets.unseen_features, weight, bias, class_embeddings)
  seen_scores = bilinear_logits(sets.seen_features, weight, bias, class_embeddings)
  zsl_predictions = sets.unseen_classes[unseen_scores[:, sets.unseen_classes].argmax(1)]
  zsl = per_class_accuracy(zsl_predictions, sets.unseen_labels, sets.unseen_classes,
                           num_classes)
  u = per_class_accuracy(unseen_scores.argmax(1), sets.unseen_labels, sets.unseen_classes,
                         num_classes)
  s = per_class_accuracy(seen_scores.argmax(1), sets.seen_labels, sets.seen_classes,
                         num_classes)
  h = torch.where(u + s > 0, 2 * u * s / (u + s).clamp(min=1e-12), torch.zeros_like(u))
  return torch.stack([zsl, u, s, h])


def train_final_classifier(features, labels, class_embeddings, sets: Optional[EvalSets],
                           settings: FinalClassifierSettings, seed: int, *,
                           initial: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                           ) -> Dict[str, Any]:
  """One bilinear classifier over all classes: SGD + StepLR, metrics every epoch.

  Args:
    features: (N, D) device tensor of the pooled training set.
    labels: (N,) long global ids.
    class_embeddings: (C, K) embeddings of all classes.
    sets: the test sets, or None (no evaluation).
    settings: the `FinalClassifierSettings`.
    seed: `torch.manual_seed` of this classifier (init and shuffling).
    initial: optional (W (K, D), b (K,)) to start from instead of a draw.

  Returns:
    {"weight", "bias" (trained, detached), "curves": (epochs, 4) numpy
    metrics or None, "train_s", "eval_s"}: the seconds of the SGD steps and
    of the evaluations (the device synchronised at each epoch's end, where
    the reference reads its metrics).
  """
  torch.manual_seed(seed)
  device = features.device
  num_examples, feature_dim = features.shape
  if initial is None:
    weight, bias = sample_theta(class_embeddings.shape[1], feature_dim, device)
  else:
    weight, bias = (t.detach().clone().to(device).requires_grad_(True) for t in initial)
  optimizer = torch.optim.SGD([weight, bias], lr=settings.lr, momentum=settings.momentum,
                              weight_decay=settings.weight_decay)
  schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=settings.lr_decay)
  curves, train_s, eval_s = [], 0.0, 0.0
  for _ in range(settings.epochs):
    started = time.perf_counter()
    order = torch.randperm(num_examples, device=device)
    for start in range(0, num_examples, settings.batch_size):
      batch = order[start:start + settings.batch_size]
      loss = F.cross_entropy(bilinear_logits(features[batch], weight, bias, class_embeddings),
                             labels[batch])
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
    schedule.step()
    synchronize(device)
    train_s += time.perf_counter() - started
    if sets is not None and settings.evaluate_every_epoch:
      started = time.perf_counter()
      with torch.no_grad():
        curves.append(gzsl_metrics(weight, bias, class_embeddings, sets).tolist())
      eval_s += time.perf_counter() - started
  return {"weight": weight.detach(), "bias": bias.detach(),
          "curves": np.asarray(curves) if curves else None, "train_s": train_s,
          "eval_s": eval_s}


def time_final_classifier(features: np.ndarray, labels: np.ndarray,
                          class_embeddings: np.ndarray, eval_arrays: Optional[Dict[str, Any]],
                          settings: FinalClassifierSettings, device, *,
                          projected_epochs: int) -> Dict[str, Any]:
  """Trains the classifiers of `settings.seeds` one after another, timed.

  An untimed warm-up (one epoch on the first two batches, with an
  evaluation) first sets up the device's libraries.

  Args:
    features: (N, D) pooled training features.
    labels: (N,) global ids.
    class_embeddings: (C, K).
    eval_arrays: `EvalSets.from_arrays`' arrays, or None.
    settings: the `FinalClassifierSettings`.
    device: the torch device.
    projected_epochs: the epochs the time is projected to (the reference's 200).

  Returns:
    {"epochs_timed", "seconds", "projected_s", "train_s", "eval_s",
    "num_classifier_seeds", "num_train_rows", "last" (per-seed last-epoch
    metrics, or None)}.
  """
  device = torch.device(device)
  x = torch.tensor(np.asarray(features, np.float32), device=device)
  y = torch.tensor(np.asarray(labels, np.int64), device=device)
  embeddings = torch.tensor(np.asarray(class_embeddings, np.float32), device=device)
  sets = None if eval_arrays is None else EvalSets.from_arrays(device, **eval_arrays)
  warm = 2 * settings.batch_size
  train_final_classifier(x[:warm], y[:warm], embeddings, sets,
                         dataclasses.replace(settings, epochs=1), settings.seeds[0])
  synchronize(device)
  started = time.perf_counter()
  results = [train_final_classifier(x, y, embeddings, sets, settings, seed)
             for seed in settings.seeds]
  synchronize(device)
  seconds = time.perf_counter() - started
  last = None
  if results[0]["curves"] is not None:
    last = [dict(zip(("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"), r["curves"][-1].tolist()))
            for r in results]
  return {"epochs_timed": settings.epochs, "seconds": seconds,
          "projected_s": seconds * projected_epochs / settings.epochs,
          "epochs": projected_epochs, "train_s": sum(r["train_s"] for r in results),
          "eval_s": sum(r["eval_s"] for r in results),
          "num_classifier_seeds": len(settings.seeds), "num_train_rows": int(x.shape[0]),
          "last": last}


