"""An eager PyTorch rendition of the reference's CUB stage-1 iteration.

Written from the project's specification of the authors' code (what their
PyTorch code does), not from their code, so that
`experiments.benchmarking.bench_torch` can time "the authors' way" next to
this project's jitted programs on the same device. It is a timing
reference and an independent check of the project's losses
(tests/test_torch_reference.py), not a training tool. The final classifier
is `torch_final_classifier`.

Stage 1 (`ReferenceStage1.iteration`), as the spec's sections 3 and 4 say:

* n_critic critic steps: a class-balanced real batch (weights 1 / n_y, with
  replacement), fakes G(a_y) without gradient, WGAN-GP with the penalty's
  input gradient from `torch.autograd.grad(create_graph=True)`, Adam;
* one generator step: -mean D(G(a_y)) over labels uniform over the seen
  classes, backpropagated; then, one class at a time, the class's GM term
  beta * sum_P (1 - cos_P) between the bilinear classifier's gradients on a
  real batch of the class and on gm_fake_repeat x as many fakes, both from
  `torch.autograd.grad(create_graph=True)` (the reference builds the real
  one with a graph too, wasted work that is kept here), each term
  `.backward()`-ed on its own into G's gradients; one Adam step;
* theta (W ~ N(0, 0.02^2), b = 0) redrawn for the next iteration.

Parameter layouts are PyTorch's: a linear layer's weight is (out, in), so
the bilinear kernel is W (K, D) and scores are (x W^T + b) . a_c; the
"row" cosine of a (K, D) gradient is `F.cosine_similarity(..., dim=1)`.
`load_flax_generator` / `load_flax_critic` copy the project's parameters
(kernels (in, out)) into these modules, for the tests.

Everything stays on `device`; nothing waits for the device inside an
iteration (the timer synchronises before reading the clock). Batches have
the project's fixed sizes (a GM class's 60 real features drawn with
replacement when it has fewer), not the reference iterators' alternating
short ones (60 / 34, 256 / 44 on CUB): the shapes both sides time are the
same, and no draw is the same (torch's RNG, not JAX's).
"""

import dataclasses
import math
import statistics
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

LEAKY_RELU_SLOPE = 0.2
XAVIER_GAIN = math.sqrt(2.0)
CLASSIFIER_INIT_STD = 0.02


def synchronize(device: torch.device) -> None:
  """Waits for the device's queued work (a no-op on the CPU, which runs eagerly).

  Args:
    device: the torch device.
  """
  if torch.device(device).type == "cuda":
    torch.cuda.synchronize(device)


def _linear(fan_in: int, fan_out: int, device) -> nn.Linear:
  layer = nn.Linear(fan_in, fan_out, device=device)
  nn.init.xavier_normal_(layer.weight, gain=XAVIER_GAIN)
  nn.init.zeros_(layer.bias)
  return layer


def _mlp(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
  for i, layer in enumerate(layers):
    if i:
      x = F.leaky_relu(x, LEAKY_RELU_SLOPE)
    x = layer(x)
  return x


class LatentNoiseGenerator(nn.Module):
  """G(z, a): z = mu(a) + exp(logvar(a) / 2) * eps, an MLP on z, output ReLU.

  Args:
    embedding_dim: K.
    feature_dim: D.
    noise_dim: Z.
    hidden_dims: the MLP's hidden widths (LeakyReLU(0.2) between layers).
    device: where the parameters live.
  """

  def __init__(self, embedding_dim: int, feature_dim: int, noise_dim: int,
               hidden_dims: Sequence[int], device=None):
    super().__init__()
    self.noise_dim = noise_dim
    self.mu = _linear(embedding_dim, noise_dim, device)
    self.logvar = _linear(embedding_dim, noise_dim, device)
    widths = (noise_dim,) + tuple(hidden_dims) + (feature_dim,)
    self.layers = nn.ModuleList(_linear(a, b, device) for a, b in zip(widths, widths[1:]))

  def forward(self, embeddings: torch.Tensor,
              noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, D) non-negative features of (B, K) embeddings; noise (B, Z) drawn if None."""
    if noise is None:
      noise = torch.randn(embeddings.shape[0], self.noise_dim, device=embeddings.device)
    z = self.mu(embeddings) + torch.exp(0.5 * self.logvar(embeddings)) * noise
    return F.relu(_mlp(self.layers, z))


class ConditionalCritic(nn.Module):
  """D(x, a): an MLP on concat[x, a] (LeakyReLU(0.2)), one score per row.

  Args:
    feature_dim: D.
    embedding_dim: K.
    hidden_dims: hidden widths.
    device: where the parameters live.
  """

  def __init__(self, feature_dim: int, embedding_dim: int, hidden_dims: Sequence[int],
               device=None):
    super().__init__()
    widths = (feature_dim + embedding_dim,) + tuple(hidden_dims) + (1,)
    self.layers = nn.ModuleList(_linear(a, b, device) for a, b in zip(widths, widths[1:]))

  def forward(self, features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """(B,) scores."""
    return _mlp(self.layers, torch.cat([features, embeddings], dim=1)).squeeze(1)


def _copy(parameter: torch.Tensor, value) -> None:
  with torch.no_grad():
    # A copy: JAX's arrays come back read-only, which torch warns about.
    parameter.copy_(torch.tensor(np.array(value), dtype=parameter.dtype))


def load_flax_generator(generator: LatentNoiseGenerator, params: Dict[str, Any]) -> None:
  """Copies a project latent_noise generator's parameters into `generator`.

  Args:
    generator: the torch module (same sizes).
    params: `gmn_jax.models.init_generator`'s dict (kernels (in, out)).
  """
  for name in ("mu", "logvar"):
    _copy(getattr(generator, name).weight, np.asarray(params[name]["kernel"]).T)
    _copy(getattr(generator, name).bias, params[name]["bias"])
  for i, layer in enumerate(generator.layers):
    _copy(layer.weight, np.asarray(params["layers"][f"layer_{i}"]["kernel"]).T)
    _copy(layer.bias, params["layers"][f"layer_{i}"]["bias"])


def load_flax_critic(critic: ConditionalCritic, params: Dict[str, Any]) -> None:
  """Copies a project conditional critic's parameters into `critic`.

  The project keeps its first layer's kernel in a features block and an
  embedding block; stacked, they are the kernel of concat[x, a].

  Args:
    critic: the torch module (same sizes).
    params: `gmn_jax.models.init_critic`'s dict.
  """
  for i, layer in enumerate(critic.layers):
    block = params["layers"][f"layer_{i}"]
    if i == 0:
      kernel = np.concatenate([np.asarray(block["kernel_features"]),
                               np.asarray(block["kernel_embedding"])], axis=0)
    else:
      kernel = np.asarray(block["kernel"])
    _copy(layer.weight, kernel.T)
    _copy(layer.bias, block["bias"])


# --------------------------------------------------------------------------
# Losses.


def critic_loss(critic: ConditionalCritic, real, fake, embeddings, interpolation_weights,
                gp_weight: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """WGAN-GP: mean D(fake) - mean D(real) + gp_weight * mean (|grad_x D(x_hat)| - 1)^2.

  Args:
    critic: the critic.
    real: (B, D) real features.
    fake: (B, D) generated features (no gradient needed).
    embeddings: (B, K) the condition of both batches (held fixed in the penalty).
    interpolation_weights: (B, 1) e in [0, 1]: x_hat = e real + (1 - e) fake.
    gp_weight: lambda.

  Returns:
    (loss, wasserstein = mean D(real) - mean D(fake), unweighted penalty).
  """
  wasserstein = critic(real, embeddings).mean() - critic(fake, embeddings).mean()
  mixed = (interpolation_weights * real + (1.0 - interpolation_weights) * fake).detach()
  mixed.requires_grad_(True)
  (input_grads,) = torch.autograd.grad(critic(mixed, embeddings).sum(), mixed,
                                       create_graph=True)
  penalty = ((input_grads.norm(2, dim=1) - 1.0) ** 2).mean()
  return -wasserstein + gp_weight * penalty, wasserstein, penalty


def bilinear_logits(features, weight, bias, class_embeddings) -> torch.Tensor:
  """(B, C) compatibility scores (x W^T + b) . a_c, W (K, D), b (K,), a (C, K)."""
  return (features @ weight.t() + bias) @ class_embeddings.t()


def gm_class_distance(real, fake, label: int, theta_weight, theta_bias, seen_embeddings, *,
                      eps: float = 1e-8, real_create_graph: bool = True) -> torch.Tensor:
  """One class's gradient matching distance, "row" granularity (unweighted).

  With l(theta; B) the mean cross-entropy of the bilinear classifier on
  batch B (logits over all seen classes, target `label`), g_r and g_s its
  gradients w.r.t. (W, b) on the real and fake batches:
  (1 - mean_k cos(g_r^W[k, :], g_s^W[k, :])) + (1 - cos(g_r^b, g_s^b)).

  Args:
    real: (n_r, D) real features of the class.
    fake: (n_s, D) generated features of the class (differentiable).
    label: the class's index among the seen classes.
    theta_weight: (K, D) classifier weight; must require grad.
    theta_bias: (K,) classifier bias; must require grad.
    seen_embeddings: (S, K).
    eps: the cosine's lower bound on each norm (torch's default).
    real_create_graph: build g_r with a graph, as the reference does.

  Returns:
    The scalar distance, differentiable w.r.t. `fake`.
  """
  params = (theta_weight, theta_bias)

  def classifier_loss(features):
    target = torch.full((features.shape[0],), label, dtype=torch.long, device=features.device)
    return F.cross_entropy(bilinear_logits(features, *params, seen_embeddings), target)

  real_grads = torch.autograd.grad(classifier_loss(real), params,
                                   create_graph=real_create_graph)
  fake_grads = torch.autograd.grad(classifier_loss(fake), params, create_graph=True)
  distance = real.new_zeros(())
  for g_r, g_s in zip(real_grads, fake_grads):
    # A matrix: one cosine per row (over the input axis), averaged; a vector: one.
    cosine = F.cosine_similarity(g_r, g_s, dim=g_r.dim() - 1, eps=eps).mean()
    distance = distance + (1.0 - cosine)
  return distance


def sample_theta(embedding_dim: int, feature_dim: int, device) -> Tuple[torch.Tensor, ...]:
  """A fresh bilinear classifier: W ~ N(0, 0.02^2) (K, D), b = 0, both requiring grad."""
  weight = torch.randn(embedding_dim, feature_dim, device=device) * CLASSIFIER_INIT_STD
  bias = torch.zeros(embedding_dim, device=device)
  return weight.requires_grad_(True), bias.requires_grad_(True)


def generator_step_backward(generator: LatentNoiseGenerator, critic: ConditionalCritic,
                            adversarial_embeddings, gm_labels: Sequence[int], gm_real,
                            theta, seen_embeddings, gm_weight: float, fake_per_class: int, *,
                            adversarial_noise=None, gm_noise=None,
                            real_create_graph: bool = True) -> torch.Tensor:
  """The generator loss's backward passes, the reference's way (one per GM class).

  Accumulates into the generator's .grad (the caller zeroes it and steps):
  -mean D(G(a_y)) first, then gm_weight * `gm_class_distance` of each class
  on its own fakes. The critic's parameters should not require grad.

  Args:
    generator: the generator.
    critic: the critic.
    adversarial_embeddings: (B, K) a_y of the adversarial batch.
    gm_labels: the GM classes (indices among the seen classes).
    gm_real: one (n_r, D) real batch per GM class.
    theta: (W (K, D), b (K,)) shared by the classes.
    seen_embeddings: (S, K).
    gm_weight: beta.
    fake_per_class: n_s, fakes per GM class.
    adversarial_noise: optional (B, Z) noise of the adversarial fakes.
    gm_noise: optional per-class (n_s, Z) noise of the GM fakes.
    real_create_graph: see `gm_class_distance`.

  Returns:
    The total loss's value (detached).
  """
  adversarial = -critic(generator(adversarial_embeddings, adversarial_noise),
                        adversarial_embeddings).mean()
  adversarial.backward()
  total = adversarial.detach()
  for j, (label, real) in enumerate(zip(gm_labels, gm_real)):
    embeddings = seen_embeddings[label].expand(fake_per_class, -1)
    fake = generator(embeddings, None if gm_noise is None else gm_noise[j])
    term = gm_weight * gm_class_distance(real, fake, label, *theta, seen_embeddings,
                                         real_create_graph=real_create_graph)
    term.backward()
    total = total + term.detach()
  return total


# --------------------------------------------------------------------------
# Stage 1.


@dataclasses.dataclass(frozen=True)
class Stage1Settings:
  """Sizes and hyperparameters of the stage-1 iteration (defaults: the reference's CUB).

  Attributes:
    feature_dim: D.
    embedding_dim: K (att + sent: 312 + 1024).
    noise_dim: Z.
    generator_hidden: generator hidden widths.
    critic_hidden: critic hidden widths.
    batch_size: critic and adversarial batch size.
    n_critic: critic steps per iteration.
    gp_weight: lambda.
    lr_generator: Adam learning rate of G.
    lr_critic: Adam learning rate of D.
    betas: Adam (beta1, beta2) of both.
    class_balanced: class-balanced critic batches (else uniform over examples).
    gm_num_classes: GM classes per iteration (distinct).
    gm_real_per_class: real features per GM class.
    gm_fake_repeat: fakes per real feature.
    gm_weight: beta.
    real_create_graph: build the real GM gradient with a graph (reference).
  """

  feature_dim: int = 2048
  embedding_dim: int = 1336
  noise_dim: int = 512
  generator_hidden: Tuple[int, ...] = (2048,)
  critic_hidden: Tuple[int, ...] = (1024,)
  batch_size: int = 256
  n_critic: int = 5
  gp_weight: float = 10.0
  lr_generator: float = 1e-4
  lr_critic: float = 1e-4
  betas: Tuple[float, float] = (0.0, 0.999)
  class_balanced: bool = True
  gm_num_classes: int = 5
  gm_real_per_class: int = 60
  gm_fake_repeat: int = 2
  gm_weight: float = 100.0
  real_create_graph: bool = True


class ReferenceStage1:
  """The networks, optimisers and device-resident data of one stage-1 run.

  Args:
    settings: the `Stage1Settings`.
    features: (N, D) real seen training features.
    labels: (N,) their seen-class indices 0..S-1 (every class present).
    seen_embeddings: (S, K).
    device: the torch device.
    seed: `torch.manual_seed` of the run (the reference seeds globally).
  """

  def __init__(self, settings: Stage1Settings, features: np.ndarray, labels: np.ndarray,
               seen_embeddings: np.ndarray, device, seed: int = 0):
    torch.manual_seed(seed)
    s, self.settings, self.device = settings, settings, torch.device(device)
    self.features = torch.tensor(np.asarray(features, np.float32), device=self.device)
    labels = np.asarray(labels, np.int64)
    self.labels = torch.as_tensor(labels, device=self.device)
    self.seen_embeddings = torch.tensor(np.asarray(seen_embeddings, np.float32),
                                           device=self.device)
    self.num_seen = self.seen_embeddings.shape[0]
    counts = np.bincount(labels, minlength=self.num_seen)
    self.sample_weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float32,
                                          device=self.device)
    # Host-side class lists, as the reference's per-class iterators: a GM
    # class is a Python int, so picking its batch never waits for the device.
    self.class_members = [torch.as_tensor(np.flatnonzero(labels == c), device=self.device)
                          for c in range(self.num_seen)]
    self.class_counts = [int(n) for n in counts]
    self.generator = LatentNoiseGenerator(s.embedding_dim, s.feature_dim, s.noise_dim,
                                          s.generator_hidden, self.device)
    self.critic = ConditionalCritic(s.feature_dim, s.embedding_dim, s.critic_hidden,
                                    self.device)
    self.generator_opt = torch.optim.Adam(self.generator.parameters(), lr=s.lr_generator,
                                          betas=s.betas)
    self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=s.lr_critic, betas=s.betas)
    self.theta = sample_theta(s.embedding_dim, s.feature_dim, self.device)

  def _critic_indices(self) -> torch.Tensor:
    if self.settings.class_balanced:
      return torch.multinomial(self.sample_weights, self.settings.batch_size, replacement=True)
    return torch.randint(self.features.shape[0], (self.settings.batch_size,),
                         device=self.device)

  def _class_batch(self, label: int) -> torch.Tensor:
    """A fixed-size real batch of one class: without replacement where it is big enough."""
    n, count = self.settings.gm_real_per_class, self.class_counts[label]
    if count >= n:
      picks = torch.randperm(count, device=self.device)[:n]
    else:
      picks = torch.randint(count, (n,), device=self.device)
    return self.features[self.class_members[label][picks]]

  def critic_step(self) -> torch.Tensor:
    """One WGAN-GP critic update; returns its loss (a device tensor)."""
    s = self.settings
    indices = self._critic_indices()
    real = self.features[indices]
    embeddings = self.seen_embeddings[self.labels[indices]]
    with torch.no_grad():
      fake = self.generator(embeddings)
    weights = torch.rand(s.batch_size, 1, device=self.device)
    loss, _, _ = critic_loss(self.critic, real, fake, embeddings, weights, s.gp_weight)
    self.critic_opt.zero_grad(set_to_none=True)
    loss.backward()
    self.critic_opt.step()
    return loss.detach()

  def generator_step(self) -> torch.Tensor:
    """One generator update (adversarial + per-class GM); returns its loss."""
    s = self.settings
    labels = torch.randint(self.num_seen, (s.batch_size,), device=self.device)
    gm_labels = torch.randperm(self.num_seen)[:s.gm_num_classes].tolist()  # host RNG
    gm_real = [self._class_batch(c) for c in gm_labels]
    self.critic.requires_grad_(False)  # No critic gradients in the generator step.
    self.generator_opt.zero_grad(set_to_none=True)
    loss = generator_step_backward(
        self.generator, self.critic, self.seen_embeddings[labels], gm_labels, gm_real,
        self.theta, self.seen_embeddings, s.gm_weight, s.gm_fake_repeat * s.gm_real_per_class,
        real_create_graph=s.real_create_graph)
    self.generator_opt.step()
    self.critic.requires_grad_(True)
    return loss

  def iteration(self) -> torch.Tensor:
    """n_critic critic steps, one generator step, a fresh theta; returns G's loss."""
    for _ in range(self.settings.n_critic):
      self.critic_step()
    loss = self.generator_step()
    self.theta = sample_theta(self.settings.embedding_dim, self.settings.feature_dim,
                              self.device)
    return loss


def time_stage1(run: ReferenceStage1, *, iterations: int, chunks: int) -> Dict[str, Any]:
  """Times `chunks` runs of `iterations` iterations after one untimed warm-up run.

  The device is synchronised before each clock reading, so a chunk's time
  is the device's as well as the host's.

  Args:
    run: the stage-1 run.
    iterations: iterations per chunk.
    chunks: timed chunks.

  Returns:
    {"ms_per_iteration" (median over chunks), "cpu_ms_per_iteration",
    "chunk_seconds", "chunk_cpu_seconds", "warmup_s", "iterations_per_chunk"}.
  """

  def chunk():
    synchronize(run.device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
      loss = run.iteration()
    synchronize(run.device)
    return time.perf_counter() - wall, time.process_time() - cpu, loss

  warmup_s, _, _ = chunk()
  walls, cpus, losses = zip(*(chunk() for _ in range(chunks)))
  return {"ms_per_iteration": 1e3 * statistics.median(walls) / iterations,
          "cpu_ms_per_iteration": 1e3 * statistics.median(cpus) / iterations,
          "chunk_seconds": list(walls), "chunk_cpu_seconds": list(cpus), "warmup_s": warmup_s,
          "iterations_per_chunk": iterations,
          "finite": bool(torch.isfinite(torch.stack(losses)).all().item())}


def describe_device(device) -> Dict[str, Any]:
  """Torch's version, the device and its name, threads and matmul precision.

  Args:
    device: the torch device.

  Returns:
    A JSON-ready dict.
  """
  device = torch.device(device)
  name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
  return {"torch_version": torch.__version__, "device": str(device), "device_name": name,
          "num_threads": torch.get_num_threads(),
          "float32_matmul_precision": torch.get_float32_matmul_precision()}
