"""``python -m breccia`` (also installed as ``breccia``).

With no command it runs the demo (:mod:`breccia.demo`). Commands are
registered in :data:`COMMANDS`: ``quantize`` and ``inspect`` (see
``DESIGN.md``; the work is in :mod:`breccia.io.convert`).
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


def _fail(command: str, e: Exception) -> int:
    print(f"breccia {command}: error: {e}", file=sys.stderr)
    return 1


def _configure_quantize(p: argparse.ArgumentParser) -> None:
    from .io.convert import DEFAULT_SKIP, RECIPE_CHOICES

    p.add_argument("src", metavar="SRC", help="a .safetensors file or a Hugging Face checkpoint folder")
    p.add_argument("dst", metavar="DST", help="output folder (or a .safetensors file for --format breccia/deepseek-v3)")
    p.add_argument("--recipe", required=True, choices=sorted(RECIPE_CHOICES), help="quantization recipe")
    p.add_argument(
        "--format",
        default="breccia",
        choices=("breccia", "deepseek-v3", "compressed-tensors"),
        help="output checkpoint format (default: breccia)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="GLOB",
        help=f"keep tensors whose name matches GLOB in high precision (repeatable; added to the defaults "
        f"{' '.join(DEFAULT_SKIP)}; tensors that are not 2-D floats are always kept)",
    )
    p.add_argument("--no-default-skip", action="store_true", help="drop the default --skip patterns")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_quantize(args: argparse.Namespace) -> int:
    from .io.convert import DEFAULT_SKIP, RECIPE_CHOICES, quantize_checkpoint

    skip = (() if args.no_default_skip else DEFAULT_SKIP) + tuple(args.skip)
    try:
        s = quantize_checkpoint(
            args.src, args.dst, RECIPE_CHOICES[args.recipe], args.format, skip=skip, progress=not args.quiet
        )
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as e:
        return _fail("quantize", e)
    ratio = s.bytes_in / s.bytes_out if s.bytes_out else 1.0
    print(
        f"{args.dst}: {s.quantized} tensors quantized ({args.recipe}), {s.kept} kept; "
        f"{s.bytes_in:,} -> {s.bytes_out:,} bytes ({ratio:.2f}x)"
    )
    return 0


def _configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a .safetensors file or a checkpoint folder (any format)")


def _run_inspect(args: argparse.Namespace) -> int:
    from .io.convert import describe_checkpoint, format_table

    try:
        print(format_table(describe_checkpoint(args.path)))
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as e:
        return _fail("inspect", e)
    return 0


#: the subcommands, in the order ``--help`` lists them
COMMANDS: tuple[Command, ...] = (
    Command(
        "quantize",
        "quantize a safetensors file or Hugging Face checkpoint folder, one tensor at a time",
        _configure_quantize,
        _run_quantize,
    ),
    Command(
        "inspect",
        "list a checkpoint's tensors: shape, recipe or dtype, bytes, compression",
        _configure_inspect,
        _run_inspect,
    ),
)


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
