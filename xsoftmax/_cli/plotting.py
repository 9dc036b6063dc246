"""matplotlib for the command line's ``--plot`` options: optional, checked up front."""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["missing", "pyplot"]


def missing(command: str) -> str | None:
    """The message to print when ``--plot`` cannot work, or ``None`` when it can.

    Checked before a command starts measuring or training, so a missing
    optional dependency costs the user nothing.
    """
    if importlib.util.find_spec("matplotlib") is None:
        return f"xsoftmax {command}: --plot needs matplotlib: pip install 'xsoftmax[plot]'"
    return None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
