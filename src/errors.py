"""Errors whose message is the whole story: the entry points print them as one line and exit non-zero."""


class UserError(Exception):
    """A problem with the user's input (flags, paths, files); the message says how to fix it."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last good checkpoint."""
