"""The one exception type that the command-line entry points turn into a one-line message."""


class UsageError(ValueError):
    """Bad configuration or input that the user can fix; its message says how."""
