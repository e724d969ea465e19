"""Error types. Each carries a message a user can act on and the exit code it maps to.

Library code raises these; only the command-line entry points turn them into one line on
stderr and an exit status.
"""

from __future__ import annotations


class PyfileError(Exception):
    """Base class: an expected failure with a one-line, user-facing message."""

    exit_code = 1

    def __str__(self) -> str:  # keep messages on one line whatever was passed in
        return " ".join(super().__str__().split())


class UsageError(PyfileError):
    """Bad command-line usage: unknown flag, bad value, conflicting options."""

    exit_code = 2


class InputError(PyfileError):
    """A file given to us is missing, unreadable or of the wrong kind."""


class GGUFError(InputError):
    """The data is not a well-formed GGUF file."""


class ArchiveError(InputError):
    """A pyfile (or zip) is damaged, truncated or not one of ours."""


class VerifyError(ArchiveError):
    """A member's checksum, size or alignment disagrees with the manifest."""


class ArgsSyntaxError(UsageError):
    """A ``.args`` text cannot be parsed."""


class EngineError(PyfileError):
    """The inference engine is missing or failed to load or run the model."""


class EngineVersionError(EngineError):
    """The installed llama-cpp-python is not the version pyfile's engine adapter was written
    for (it replaces a private constructor of that exact version)."""


class BackendError(EngineError):
    """A requested compute backend (GPU or CPU variant) cannot be used here."""


class CompileError(BackendError):
    """ggml's GPU backend could not be compiled on this machine (the message says why and
    what to do); the launcher then moves on to the next backend."""
