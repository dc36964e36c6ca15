"""The one base class for anticipated failures: bad input, a missing file, an impossible setting.

Raise a subclass (or :class:`UserError` itself) with a message that says what to fix — which folder,
which value, which file. The command line prints such an error as one line and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An anticipated failure whose message tells the user what to fix."""
