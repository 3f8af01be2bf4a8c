r"""Draws the figures of a finished (or running) training workdir as PNGs.

  python -m experiments.plot --workdir=/tmp/gmn_digits

Writes W/plots/: training.png (stage 1 scalars: critic Wasserstein
estimate, GM loss, generator loss, ...), evaluation.png (GZSL u, s, H and
ZSL T1 per final-classifier epoch), seen_unseen.png (calibrated stacking's
seen-unseen curves with their AUSUC) and projection_seed_<s>.png (PCA and
t-SNE of real vs generated features of a few unseen classes, titled with how
many of the dataset's unseen classes it shows). For an ablation workdir
(experiments.ablation) it writes W/plots/ablation.png (paper rows with
superscripts, e.g. WGAN^{S+U} + GM) and each row's figures; for a sweep
(experiments.sweep) W/plots/sweep.png and each of its runs' figures. One-point curves
get markers, step and epoch axes integer ticks, and legends sit outside the
axes (docs/reproduction.md). Figures whose inputs do not exist yet are skipped with a
note. A missing workdir prints one line to stderr and exits with status 2.
"""

from typing import Sequence

from absl import app
from absl import flags

from experiments import cli
from gmn_jax import workdir_plots
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

_WORKDIR = None
_PROJECTIONS = None


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program).

  Importing the module therefore defines no absl flags, so that several
  binaries (which share flag names such as --workdir) can be imported into
  one process, as the tests do.
  """
  global _WORKDIR, _PROJECTIONS
  _WORKDIR = flags.DEFINE_string("workdir", None, "The run's (or ablation's) workdir.")
  _PROJECTIONS = flags.DEFINE_list("projections", ["pca", "tsne"],
                                   "2-D projections of the feature figure (pca, tsne).")


def main(argv: Sequence[str]) -> None:
  """Draws the figures; prints the written and skipped ones."""
  cli.reject_arguments(argv)
  try:
    if not _WORKDIR.value:
      raise ConfigError("--workdir: expected a run's directory, found nothing")
    unknown = [p for p in _PROJECTIONS.value if p not in ("pca", "tsne")]
    if unknown:
      raise ConfigError(
          f"--projections: expected names among pca, tsne, found {unknown}")
    written, skipped = workdir_plots.plot_workdir(_WORKDIR.value,
                                                  projections=_PROJECTIONS.value)
  except GMNError as error:
    cli.fail(error)
  for path in written:
    print(f"written: {path}")
  for note in skipped:
    print(f"skipped: {note}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
