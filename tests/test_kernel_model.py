"""Tests of experiments.benchmarking.kernel_model: the roofline prices of launches."""

import pytest

from experiments.benchmarking import gpu_dump
from experiments.benchmarking import kernel_model as km

H100ISH = km.Device(matmul_rate=132e12, bandwidth=1e12, launch_latency=2e-6, num_sms=132)


def test_product_seconds_counts_whole_waves_of_tiles():
  tile_seconds = 2 * 128 * 128 * 64 / (132e12 / 132)
  one_wave = gpu_dump.Product((128 * 132, 128), 64, "f32")  # 132 tiles.
  assert km.product_seconds(one_wave, H100ISH) == pytest.approx(tile_seconds)
  assert km.product_seconds(gpu_dump.Product((1, 1), 64, "f32"), H100ISH) == pytest.approx(
      tile_seconds)  # A single tile still costs a wave.
  two_waves = gpu_dump.Product((128 * 133, 128), 64, "f32")
  assert km.product_seconds(two_waves, H100ISH) == pytest.approx(2 * tile_seconds)
  batched = gpu_dump.Product((133, 128, 128), 64, "f32")
  assert km.product_seconds(batched, H100ISH) == pytest.approx(2 * tile_seconds)
  assert km.product_seconds(gpu_dump.Product((128 * 132, 128), 64, "bf16"), H100ISH) == (
      pytest.approx(tile_seconds / 2))


def test_model_time_prices_each_launch_by_its_bound():
  product = gpu_dump.Product((128 * 132, 128), 1000, "f32")  # One wave: 2.48e-5 s.
  compute = km.product_seconds(product, H100ISH)
  kernels = (
      gpu_dump.Kernel(1, "gemm", "kCustomKernel", 2.0, True, (product,), 1_000_000),  # 1e-6 s mem.
      gpu_dump.Kernel(2, "add", "kCustomKernel", 3.0, True, (), 5_000_000),  # 5e-6 s mem.
  )
  dump = gpu_dump.Dump("d", kernels, outer_trip_count=10, command_buffers_per_iteration=1.0)
  time = km.model_time(dump, H100ISH)
  assert time.product_bound == pytest.approx(2 * compute)
  assert time.memory_bound == pytest.approx(3 * 5e-6)
  assert time.latency == pytest.approx(5 * 2e-6)
  assert time.total == pytest.approx(2 * compute + 3 * 5e-6 + 5 * 2e-6)
  top = km.top_kernels(dump, H100ISH, 1)
  assert [k.name for k, _ in top] == ["gemm"] and top[0][1] == pytest.approx(2 * compute)
