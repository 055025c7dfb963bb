"""One error base class for the storage package; every message is one line a user can act on."""

from __future__ import annotations


class LakeError(Exception):
    """Base of every error raised by :mod:`lake`."""


class InvalidInputError(LakeError):
    """A source file or argument is not what the lake accepts (corrupt, wrong ids, not counts...)."""


class LakeNotWritableError(LakeError):
    """The lake root cannot be created or written."""


class TableNotFoundError(LakeError):
    """A table that the command needs has not been created yet."""


class SchemaMismatchError(LakeError):
    """Data or a table on disk does not match the versioned schema the code expects."""


class LakeBusyError(LakeError):
    """Another writer holds the lock for too long."""
