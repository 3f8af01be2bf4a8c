"""Where a run's numbers come from: versions, commit, devices, date, command.

`describe()` is recorded in a workdir's config.json and results.json, so a
result file says which code and which machine produced it.
"""

import datetime
import os
import platform
import shlex
import subprocess
import sys
from typing import Any, Dict, Optional

import jax
import jaxlib

import gmn_jax

_PACKAGE_DIR = os.path.dirname(os.path.abspath(gmn_jax.__file__))


def git_commit(directory: str = _PACKAGE_DIR) -> Optional[Dict[str, Any]]:
  """The git commit of the code in `directory`, when it is a git checkout.

  Args:
    directory: a directory inside the checkout (default: this package's).

  Returns:
    {"commit": the full hash, "dirty": whether tracked files differ from it},
    or None when there is no git or no repository (e.g. an installed wheel).
  """
  def git(*args):
    return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()

  try:
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    return None
  return {"commit": commit, "dirty": dirty}


def describe() -> Dict[str, Any]:
  """The provenance of a run started now, in this process.

  Returns:
    {"python", "jax", "jaxlib", "gmn_jax" (versions), "git" (`git_commit`,
    or None), "devices": {"platform", "kind", "count", "process_count"},
    "date" (UTC, ISO 8601), "command" (this process's command line, shell-
    quoted), "host"}.
  """
  devices = jax.devices()
  return {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "gmn_jax": gmn_jax.__version__,
      "git": git_commit(),
      "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind,
                  "count": len(devices), "process_count": jax.process_count()},
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": shlex.join(sys.argv),
      "host": platform.node(),
  }
