"""Two processes on 127.0.0.1 train in lockstep and agree with a one-process run.

The test starts this file twice as a worker (`python tests/test_multihost.py
worker ...`): each process has two CPU devices of its own, joins the run
with `parallel.initialize_multihost`, trains a few stage-1 iterations of the
tiny problem on the four global devices, saves its final parameters, then
runs `train.train_and_evaluate` (which resumes the finished stage 1 and
writes results from process 0 only). The reference is the tests' plain
one-process loop (`reference_training.plain_stage1`).
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 3
NUM_ITERATIONS = 2
WORKER_TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _flat_state(state):
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _problem():
  # pylint: disable=g-import-not-at-top
  from gmn_jax import specs
  from gmn_jax import train_state
  from test_train_support import tiny_config, tiny_dataset
  # pylint: enable=g-import-not-at-top
  config, dataset = tiny_config(seeds=(SEED,), **{"eval.num_classifier_seeds": 1,
                                                   "train.num_iterations": NUM_ITERATIONS,
                                                   "train.iterations_per_call": 2,
                                                   "train.checkpoint_every": 2}), tiny_dataset()
  spec = specs.train_spec(config, dataset)
  data = train_state.make_train_data(dataset, spec)
  return config, dataset, spec, data, specs.hyperparameters(config)


def worker(process_id: int, port: int, workdir: str) -> None:
  """One process of the two-process run (see the module docstring)."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  sys.path.insert(0, HERE)
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.config.update("jax_num_cpu_devices", 2)
  except (AttributeError, RuntimeError, ValueError):
    pass
  # pylint: disable=g-import-not-at-top
  from gmn_jax import parallel
  from gmn_jax import specs
  from gmn_jax import stage1
  from gmn_jax import train
  from gmn_jax import workdir as workdirs
  # pylint: enable=g-import-not-at-top
  assert parallel.initialize_multihost(True, coordinator_address=f"127.0.0.1:{port}",
                                       num_processes=2, process_id=process_id,
                                       initialization_timeout=60)
  assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
  assert parallel.is_primary() == (process_id == 0)
  config, dataset, spec, data, hyper = _problem()
  mesh = parallel.make_mesh()
  (result,) = stage1.train_generators(
      spec, data, hyper, seeds=(SEED,), schedule=specs.schedule(config),
      checkpoint_dirs=[workdirs.checkpoint_dir(workdir, SEED)],
      metrics_dirs=[workdirs.seed_dir(workdir, SEED)], mesh=mesh)
  np.savez(os.path.join(workdir, f"state_{process_id}.npz"), **_flat_state(result.state))
  summary = train.train_and_evaluate(config, workdir, dataset=dataset, mesh=mesh)
  print(f"process {process_id}: zsl_t1 {summary['metrics']['zsl_t1']['mean']:.6f}", flush=True)


# About 25 s on the 2-core machine when it is otherwise idle (2.5 minutes
# under a load of 10): two JAX processes compiling, and a one-process run.
def test_two_processes_train_in_lockstep_and_match_one_process(tmp_path):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")]))
  procs = [subprocess.Popen([sys.executable, __file__, "worker", str(i), str(port), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=WORKER_TIMEOUT_S)[0])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  for i, (proc, output) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0, f"process {i} failed:\n{output[-3000:]}"

  # pylint: disable=g-import-not-at-top
  from gmn_jax import workdir as workdirs
  from reference_training import plain_stage1
  # pylint: enable=g-import-not-at-top
  states = [dict(np.load(tmp_path / f"state_{i}.npz")) for i in range(2)]
  assert states[0].keys() == states[1].keys()
  for name in states[0]:
    np.testing.assert_array_equal(states[0][name], states[1][name], err_msg=name)

  _, _, spec, data, hyper = _problem()
  one, _ = plain_stage1(spec, data, hyper, SEED, NUM_ITERATIONS)
  reference = _flat_state(one)
  assert reference.keys() == states[0].keys()
  for name, value in reference.items():
    np.testing.assert_allclose(states[0][name], value, rtol=1e-3, atol=1e-4, err_msg=name)

  # Both processes computed the same summary; process 0 wrote it.
  lines = [next(l for l in out.splitlines() if l.startswith("process ")) for out in outputs]
  assert lines[0].split()[-1] == lines[1].split()[-1]
  assert (tmp_path / workdirs.RESULTS_FILE).is_file()
  assert (tmp_path / f"seed_{SEED}" / "metrics.jsonl").is_file()


if __name__ == "__main__":
  if len(sys.argv) == 5 and sys.argv[1] == "worker":
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
  else:
    pytest.main([__file__, "-n", "0"])
