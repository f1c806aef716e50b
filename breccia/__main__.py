"""``python -m breccia`` (also installed as ``breccia``).

With no command it runs the demo (:mod:`breccia.demo`). Commands are
registered in :data:`COMMANDS`; ``quantize`` and ``inspect`` (see
``DESIGN.md``) will be added there.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NamedTuple, Optional, Sequence


class Command(NamedTuple):
    """One subcommand: ``configure`` adds its arguments, ``run`` executes it and
    returns the exit status."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: the subcommands, in the order ``--help`` lists them
COMMANDS: tuple[Command, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    """The ``breccia`` argument parser, one subparser per :data:`COMMANDS` entry."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="breccia",
        description="breccia: block-scaled low-precision tensors for PyTorch. "
        "With no command, run the demo: every recipe's bytes and accuracy on a built-in weight.",
    )
    parser.add_argument("--version", action="version", version=f"breccia {__version__}")
    # an empty subparser group would still advertise "COMMAND ..." in the usage line
    if COMMANDS:
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for cmd in COMMANDS:
            p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
            cmd.configure(p)
            p.set_defaults(run=cmd.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the command line; returns the exit status."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    run = getattr(args, "run", None)
    if run is None:
        from .demo import main as demo_main

        return demo_main([])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
