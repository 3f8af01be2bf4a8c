"""The test session really has four CPU devices (conftest sets them up)."""

import jax


def test_four_cpu_devices():
  assert jax.device_count() == 4
  assert all(d.platform == "cpu" for d in jax.devices())
