"""Text in and out of the command line: comma-separated option values and aligned tables.

Shared by every subcommand and by the ``bench/`` suite's environment
variables, so a list or a table reads the same wherever it appears.
"""

import argparse
from collections.abc import Callable, Iterable, Sequence

__all__ = ["choice_list", "comma_list", "format_table"]


def comma_list(text: str) -> list[str]:
    """``"numpy, torch,"`` -> ``["numpy", "torch"]``: stripped, empty items dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type=``: a comma list whose every item is one of ``choices``.

    An unknown item raises ``argparse.ArgumentTypeError`` naming it and the
    choices (argparse turns it into a usage error, exit status 2).
    """

    def parse(text: str) -> list[str]:
        names = comma_list(text)
        bad = [name for name in names if name not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return names

    return parse


def format_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = (), rule: bool = False
) -> list[str]:
    """The lines of a table: columns two spaces apart, each as wide as its widest cell.

    Columns whose index is in ``right`` are right-aligned (numbers), the
    others left-aligned; ``rule`` adds a line of dashes under the header.
    Trailing spaces are stripped.
    """
    body = [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in [tuple(header), *body]) for i in range(len(header))]
    right = set(right)

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in pairs).rstrip()

    lines = [line(header)]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    return lines + [line(r) for r in body]
