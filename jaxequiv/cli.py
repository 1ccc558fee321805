"""The ``jaxequiv`` command line: ``jaxequiv [--version] COMMAND ...``.

Each stage of the data flow contributes its commands from its own module: a module listed in ``COMMANDS``
exposes ``register(subparsers)``, which adds its sub-command(s) with ``set_defaults(func=...)``; ``func(args)``
returns an exit code. Heavy imports happen inside ``func``, so ``jaxequiv --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import jaxequiv

# module path -> provides register(subparsers)
COMMANDS = [
    "jaxequiv.demo",
    "jaxequiv.contributions.cli",
    "jaxequiv.adapters.cli",
    "jaxequiv.sae.cli",
    "jaxequiv.equivalence.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxequiv", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"jaxequiv {jaxequiv.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:  # user errors: one clear line, no traceback
        print(f"jaxequiv {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
