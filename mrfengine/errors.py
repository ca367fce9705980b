"""The exception tree of mrfengine.

Every error raised on purpose by mrfengine derives from :class:`MRFEngineError`,
so callers can catch the package's errors without catching unrelated bugs.
The children also derive from the matching builtin (``ValueError``,
``FileNotFoundError``, ...) so code written against builtins keeps working.
"""

from __future__ import annotations


class MRFEngineError(Exception):
    """Base class of all errors raised by mrfengine."""


class ValidationError(MRFEngineError, ValueError):
    """An argument or an input file has the wrong shape, type, range or content."""


class OptionError(ValidationError):
    """Options that exclude each other, or that the chosen model cannot honour
    (the command line reports it as a usage error, exit status 2)."""


class SequenceError(ValidationError):
    """An acquisition description is inconsistent or physically meaningless."""


class DictionaryError(ValidationError):
    """A dictionary or parameter grid is malformed or does not fit the data."""


class BackendUnavailableError(MRFEngineError, RuntimeError):
    """A compute backend was requested explicitly but cannot run here."""


class InputFileError(MRFEngineError, OSError):
    """An input file is missing, unreadable, truncated or of the wrong kind.

    The message always names the file.
    """


class SchedulerError(MRFEngineError, ConnectionError):
    """A Dask scheduler that cannot be reached or has no workers (not a store problem)."""


class StoreError(MRFEngineError):
    """A cohort store is missing, malformed, incomplete or of another schema version."""
