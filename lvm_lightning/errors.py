"""The one exception type that the command-line entry points turn into a one-line message."""


class UsageError(ValueError):
    """Bad configuration or input that the user can fix; its message says how."""


def find_usage_error(error: BaseException) -> "UsageError | None":
    """The UsageError behind ``error``, following the chain of causes (jsonargparse wraps errors raised while instantiating)."""
    seen: set[int] = set()
    current: "BaseException | None" = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UsageError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
