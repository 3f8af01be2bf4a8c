"""The pieces of `experiments.benchmark`: shapes, FLOP counts, timing, profiles."""
