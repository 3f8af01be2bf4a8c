"""Regenerates the XLA:GPU dumps that tests/test_gpu_dump.py and test_gpu_aot.py read.

Needs JAX's CUDA plugin (pip install "jax[cuda12]"), no GPU:

    python tests/data/xla_gpu_dump/make_fixtures.py

The program: an outer loop of 3 trips around an inner loop of 4 trips. The
inner body computes two (64 × 32) · (32 × 32) products, the outer body one
(64 × 32) · (32 × 48) product, so one outer iteration holds
4 × 2 × (2·64·32·32) + 2·64·32·48 = 1,245,184 product FLOPs. `triton/` is
compiled as XLA chooses (Triton products, inner body as a command buffer);
`cublas/` with Triton products off (cuBLAS custom calls).
"""

import glob
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
from jax import lax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "..", "..", "..", "experiments/benchmarking/gpu_targets/h100_sxm.txtpb")
KEPT = ("*gpu_after_optimizations.txt", "*thunk_sequence*.txt", "*thunk_metadata.txt")


def nested_loops(x, w, v):
  def inner(_, x):
    h = jnp.tanh(x @ w)
    h = h - h.mean(0)
    h = h / (jnp.abs(h).sum(1, keepdims=True) + 1.0)
    return (h @ w.T) * jnp.cos(h.sum())

  def outer(_, x):
    x = lax.fori_loop(0, 4, inner, x)
    return x + jnp.sum(x @ v)

  return lax.fori_loop(0, 3, outer, x)


def dump(name, options):
  with open(TARGET, encoding="utf-8") as f:
    device = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                          target_config=f.read()).devices[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  args = [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
          for shape in ((64, 32), (32, 32), (32, 48))]
  with tempfile.TemporaryDirectory() as scratch:
    jax.jit(nested_loops).lower(*args).compile(compiler_options={
        "xla_dump_to": scratch, "xla_dump_hlo_as_text": True, **options})
    out = os.path.join(HERE, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for pattern in KEPT:
      for path in glob.glob(os.path.join(scratch, pattern)):
        shutil.copy(path, out)


if __name__ == "__main__":
  dump("triton", {})
  dump("cublas", {"xla_gpu_enable_triton_gemm": False})
