"""Errors a user can act on: the CLI prints their message as one line and exits non-zero."""


class GVRError(Exception):
    """Base class for every error caused by input, configuration or environment, not by a bug."""


class ConfigError(GVRError):
    """A params file, profile or override is invalid; the message names the dotted key path."""


class InputError(GVRError):
    """An input file or tensor is unusable (corrupt video, wrong shape/dtype, NaN, missing weights)."""


class StorageError(GVRError):
    """A local or object-store path cannot be read or written (missing, unreachable endpoint, denied)."""
