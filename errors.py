"""The one base class of clifvqa's user-facing errors, and how long their lists get.

A leaf module: it imports nothing, so every layer (``manifests/`` included) may import it.
"""

MAX_LISTED = 10
"""Items (videos, failures, skipped rows, manifest problems) a message or a command lists before
it only counts the rest (``... and 15 more``)."""


class ClifvqaError(ValueError):
    """A user-facing error: its message is one line saying what was wrong, where, and what to do.

    Every error clifvqa raises for bad input, files or settings derives from it; the CLI prints
    it as ``error: MESSAGE`` with exit status 2 and no traceback. It is a ValueError so that
    callers catching ValueError (from before this class existed) keep working.
    """
