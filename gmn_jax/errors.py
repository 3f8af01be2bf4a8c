"""The project's one error type for bad user input (data, configs, flags)."""


class GMNError(Exception):
  """Base class of every error the project raises on bad input."""


class DataError(GMNError, ValueError):
  """A dataset file or directory is missing, unreadable or inconsistent.

  The message always names the file, the key (where there is one) and what was
  expected versus what was found, so that a binary can print it as one line.
  """

  def __init__(self, path, key, expected, found):
    """Builds the one-line message.

    Args:
      path: the file or directory at fault (str or os.PathLike).
      key: the key inside the file, or None when the whole file is at fault.
      expected: what a valid file has there.
      found: what this file has there.
    """
    self.path = str(path)
    self.key = key
    self.expected = expected
    self.found = found
    where = self.path if key is None else f"{self.path} [{key}]"
    super().__init__(f"{where}: expected {expected}, found {found}")


class ConfigError(GMNError, ValueError):
  """A configuration field has an unknown name, a wrong type or a bad value."""
