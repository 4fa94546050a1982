"""User-facing errors: the CLI prints their message and exits with status 2."""


class BenchError(Exception):
    """An error caused by the user's input (a file, an option, a name), not by a bug."""


class DataError(BenchError):
    """A dataset, image or mask could not be read or is inconsistent; the message names the file."""


class ConfigError(BenchError):
    """An option or configuration value is invalid; the message names the option."""


class ArchitectureError(BenchError):
    """An architecture name is unknown or a plugin is broken; the message names it."""
