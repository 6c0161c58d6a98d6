"""The one exception type pacnet raises for bad input.

Every check on user input raises :class:`PacnetError` with a single line that names the
problem and, where there is one, the fix. The CLI prints that line (no traceback unless
``--debug``); Python users can catch it.
"""

from __future__ import annotations


class PacnetError(ValueError):
    """Bad input to pacnet: the message is one line naming the problem and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM to the command (``kill``, ``timeout``, a scheduler ending the job): stops it
    as Ctrl-C does. Unlike Ctrl-C in a terminal it reaches this process alone, so the
    command passes it on to its worker processes."""


def check(condition: object, message: str) -> None:
    """Raise :class:`PacnetError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise PacnetError(message)


def check_ratio(ratio: float, what: str = "ratio") -> float:
    """Return ``ratio`` as a float, or fail unless it lies strictly inside (0, 1)."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise PacnetError(f"{what} must be a number in (0, 1), got {ratio!r}") from None
    check(0.0 < value < 1.0, f"{what} must lie strictly between 0 and 1, got {value}")
    return value


def check_module(model: object) -> None:
    """Fail in one line unless ``model`` is a ``torch.nn.Module`` (a path, a name or a
    state dict given where the model belongs)."""
    from torch import nn

    if not isinstance(model, nn.Module):
        hint = (
            ": build the model and pass it (a state dict is loaded with model.load_state_dict)"
            if isinstance(model, dict | str)
            else ""
        )
        raise PacnetError(f"the model must be a torch.nn.Module, got {type(model).__name__}{hint}")


def check_type(value: object, kind: type | tuple[type, ...], what: str, hint: str = "") -> None:
    """Fail in one line unless ``value`` is a ``kind`` (``what`` names the argument)."""
    if not isinstance(value, kind):
        kinds = [k for k in (kind if isinstance(kind, tuple) else (kind,)) if k is not type(None)]
        names = " or ".join(
            ("an " if k.__name__[0] in "AEIOU" else "a ") + k.__name__ for k in kinds
        )
        if len(kinds) < (len(kind) if isinstance(kind, tuple) else 1):
            names += " or None"
        raise PacnetError(
            f"{what} must be {names}, got {type(value).__name__}{': ' + hint if hint else ''}"
        )


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (libraries such as safetensors
    start theirs with a newline), or its type name when it has no text."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def pacnet_version() -> str:
    """The installed pacnet's version (read from the package metadata, so nothing low in the
    package imports its top), or ``"unknown"`` when run from a source tree not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pacnet")
    except PackageNotFoundError:
        return "unknown"
