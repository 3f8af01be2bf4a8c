"""Performance tooling: `experiments.benchmark`'s pieces and the tools beside it.

* flops, measure, profiling, shapes, timing: what `python -m
  experiments.benchmark` (the entry point, one level up) is made of;
* bench_gm: the cost of one gradient matching evaluation;
* gpu_aot (with gpu_targets/, gpu_dump and kernel_model): compiling the
  stage-1 program for a GPU without one, and a roofline model of it;
* gpu_parallel_seeds_probe.sh and probe_summary: the prepared GPU probe of
  parallel seeds, and its summary.

docs/benchmarks.md says what each measured.
"""
