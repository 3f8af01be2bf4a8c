"""A roofline model of a compiled XLA:GPU program.

`model_time` prices every launch that `gpu_dump.analyse_dump` found as
max(product time, bytes / bandwidth) + a fixed launch latency, times its
runs per iteration. Product time counts whole waves of 128 × 128 output
tiles over the SMs, so a product with fewer tiles than SMs costs as much
as one full wave.

The model is coarse on purpose — no caches, no overlap between kernels, no
autotuned tile shapes — and is meant for ratios: how a program's cost
splits into FLOPs, memory traffic and launches, and how that split moves
with a setting (docs/benchmarks.md, "What limits parallel seeds on the
GPU"). It needs no GPU: `experiments.benchmarking.gpu_aot` makes the dumps
by compiling for a described device.
"""

import dataclasses
import math
from typing import List, Tuple

from experiments.benchmarking import gpu_dump

# Element types the tensor cores run at twice the float32 (TF32) rate.
HALF_RATE_TYPES = ("bf16", "f16")


@dataclasses.dataclass(frozen=True)
class Device:
  """What the model knows of a GPU.

  Attributes:
    matmul_rate: FLOP/s of a large float32 product at the default precision
      (TF32 on tensor-core GPUs), measured; bf16/f16 products count twice it.
    bandwidth: device memory bytes/s.
    launch_latency: seconds added to every launch (kernel start, the gap
      between dependent kernels).
    num_sms: streaming multiprocessors, the unit of a wave.
    tile: the output tile (rows, columns) one SM computes at a time.
  """
  matmul_rate: float
  bandwidth: float
  launch_latency: float
  num_sms: int
  tile: Tuple[int, int] = (128, 128)


@dataclasses.dataclass(frozen=True)
class ModelTime:
  """The model's seconds per iteration and how they split.

  Attributes:
    total: the sum over launches of max(product, memory) + latency.
    product_bound: seconds of launches whose product time exceeds their
      memory time (their product time).
    memory_bound: seconds of the other launches' memory time.
    latency: launches × launch latency.
  """
  total: float
  product_bound: float
  memory_bound: float
  latency: float


def product_seconds(product: gpu_dump.Product, device: Device) -> float:
  """Seconds of one product: whole waves of output tiles over the SMs.

  Args:
    product: the product.
    device: the device.

  Returns:
    waves × (one tile's FLOPs) / (one SM's share of the product rate).
  """
  dims = product.output_shape
  rows, columns = (dims[-2], dims[-1]) if len(dims) >= 2 else (1, dims[-1] if dims else 1)
  batch = math.prod(dims[:-2]) if len(dims) > 2 else 1
  tiles = batch * math.ceil(rows / device.tile[0]) * math.ceil(columns / device.tile[1])
  waves = math.ceil(tiles / device.num_sms)
  rate = device.matmul_rate * (2 if product.operand_type in HALF_RATE_TYPES else 1)
  return waves * 2 * device.tile[0] * device.tile[1] * product.contracted / (
      rate / device.num_sms)


def launch_bounds(kernel: gpu_dump.Kernel, device: Device) -> Tuple[float, float]:
  """Seconds of one launch of a kernel by its products and by its bytes.

  Args:
    kernel: the launch site.
    device: the device.

  Returns:
    (product seconds, bytes / bandwidth); the launch costs the larger.
  """
  return (sum(product_seconds(p, device) for p in kernel.products),
          kernel.bytes / device.bandwidth)


def model_time(dump: gpu_dump.Dump, device: Device) -> ModelTime:
  """The model's seconds per iteration of a dumped program.

  Args:
    dump: `analyse_dump`'s result.
    device: the device.

  Returns:
    The ModelTime: every launch costs max(product seconds, bytes /
    bandwidth) + launch latency, times its runs per iteration.
  """
  product_bound = memory_bound = latency = 0.0
  for kernel in dump.kernels:
    compute, memory = launch_bounds(kernel, device)
    if compute > memory:
      product_bound += kernel.runs_per_iteration * compute
    else:
      memory_bound += kernel.runs_per_iteration * memory
    latency += kernel.runs_per_iteration * device.launch_latency
  return ModelTime(product_bound + memory_bound + latency, product_bound, memory_bound,
                   latency)


def top_kernels(dump: gpu_dump.Dump, device: Device,
                count: int) -> List[Tuple[gpu_dump.Kernel, float]]:
  """The launch sites with the most modelled seconds per iteration.

  Args:
    dump: `analyse_dump`'s result.
    device: the device.
    count: how many.

  Returns:
    (kernel, seconds per iteration without latency), most first.
  """
  priced = [(k, k.runs_per_iteration * max(launch_bounds(k, device))) for k in dump.kernels]
  return sorted(priced, key=lambda pair: -pair[1])[:count]
