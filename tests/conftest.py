"""Test-wide setup: four virtual CPU devices, so multi-device code is tested.

This must run before JAX initialises its backends, which is why it lives at
the top of conftest.py (pytest imports it before any test module).
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The flag works on every supported JAX; the config option is the newer way.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

try:
  jax.config.update("jax_num_cpu_devices", 4)
except (AttributeError, RuntimeError, ValueError):
  pass  # Older JAX without the option: XLA_FLAGS above already did it.

# The real xlsa17 class-level files, when the shared folder sits beside us.
SHARED_XLSA17 = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "xlsa17"


@pytest.fixture(scope="session")
def xlsa17_dir() -> pathlib.Path:
  """The directory of real att_splits.mat files; skips when it is absent."""
  if not SHARED_XLSA17.is_dir():
    pytest.skip(f"real xlsa17 files not found at {SHARED_XLSA17}")
  return SHARED_XLSA17
