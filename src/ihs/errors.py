"""User-facing errors.

Anything a user can cause (a bad path, an unknown model, an empty file) raises
``IhsError``; the CLI prints its message on one line and exits non-zero instead
of showing a traceback. Programming errors stay ordinary exceptions.
"""


class IhsError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class DataError(IhsError):
    """A prompt set could not be read or is unusable."""


class ModelError(IhsError):
    """A model could not be found, fetched, converted or understood."""


class StoreError(IhsError):
    """An activation store is missing, corrupt or incompatible."""
