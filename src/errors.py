"""Errors whose message is the whole story: the entry points print them as one line and exit non-zero.

``UserError`` is the one base of every error a user can fix (a flag, a path, a file, the data); ``src.cli``
prints exactly these as one line. Everything else (a ``ValueError`` from a shape bug, say) keeps its
traceback. Subclasses that also derive from a built-in (``FlagError`` from ValueError, ``MissingPathError``
from FileNotFoundError, ``DataError`` and ``CheckpointError`` from RuntimeError) keep working for code that
catches the built-in. Each takes one message argument, so it pickles (DataLoader workers re-raise it).
"""


class UserError(Exception):
    """A problem with the user's input (flags, paths, files); the message says how to fix it."""


class FlagError(UserError, ValueError):
    """A command-line value that cannot work (out of range, unknown name, inconsistent with another flag)."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named (by a flag) does not exist or is of the wrong kind."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last good checkpoint."""


class RankLost(RuntimeError):
    """A rank of a distributed run died or stopped answering; the message names it, its node and how to continue."""
