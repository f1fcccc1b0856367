"""The errors this package raises for bad input.

Each names the file or value at fault and what was expected. ``tools/main.py``
prints an :class:`AlfoError` as one line and exits non-zero.
"""


class AlfoError(Exception):
    """Base class of every error about the user's input."""


class ConfigError(AlfoError, ValueError):
    """A configuration key or value that cannot be used."""


class DatasetError(AlfoError):
    """A dataset folder or split that is missing, empty or malformed."""


class AttributeFileError(AlfoError, ValueError):
    """An attribute annotation file that cannot be used."""


class ImageReadError(AlfoError, OSError):
    """An image that is missing, truncated or not an image."""


class CheckpointError(AlfoError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that needs full unpickling, which can run arbitrary code."""


class DownloadError(AlfoError):
    """A file that could not be fetched or failed its checksum."""


class TrainingError(AlfoError):
    """Training cannot go on (e.g. a loss became NaN or infinite)."""
