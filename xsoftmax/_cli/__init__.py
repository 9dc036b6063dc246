"""The ``xsoftmax`` command: ``bench`` (the main job), ``check``, ``train``, ``example``.

Each subcommand lives in its own module, which exposes
``configure(parser)`` (adds its options) and ``run(args) -> int`` (the exit
status); this module only wires them together and imports the one that
runs, so ``xsoftmax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("xsoftmax._cli.bench",
              "time softmax_loss forward+backward on every backend, against a copy floor"),
    "check": ("xsoftmax._cli.check", "check every backend and engine here against a float64 NumPy oracle"),
    "train": ("xsoftmax._cli.train",
              "train a two-layer network (CS231n's spiral net, the 4-6-3 iris net) on any backend"),
    "example": ("xsoftmax._cli.example", "print the loss and gradient of a tiny worked example"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xsoftmax",
        description="Softmax cross-entropy and affine/ReLU kernels on every Array API backend.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
