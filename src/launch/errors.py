"""The launcher's one error type: its message is the whole story, printed as one line."""


class LaunchError(Exception):
    """A problem the user can fix (a flag, a path, a missing program); the message says how."""
