"""The ``jaxequiv`` command: whole jobs (demo, convert, contributions, sae, equiv) from the shell.

Usage: ``jaxequiv [--version] [--debug] COMMAND ...``. Each stage of the data flow contributes its commands from
its own module: a module listed in ``COMMANDS`` exposes ``register(subparsers)``, which adds its sub-command(s)
with ``set_defaults(func=...)``; ``func(args)`` returns an exit code. Options come from the library's config
dataclasses where one exists (:mod:`jaxequiv.cliargs`); torch, matplotlib and the like are imported inside
``func``, so ``jaxequiv --help`` stays fast.

A failure ends in one line ``jaxequiv COMMAND: error: WHAT (HOW TO FIX IT)`` and exit status 2 (1 for an
unexpected error, which is a bug); :func:`explain` turns an exception into that line, and ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

import jaxequiv
from jaxequiv import cliargs
from jaxequiv.io.files import OutputLockedError

# module path -> provides register(subparsers)
COMMANDS = [
    "jaxequiv.demo",
    "jaxequiv.contributions.cli",
    "jaxequiv.adapters.cli",
    "jaxequiv.sae.cli",
    "jaxequiv.equivalence.cli",
]

# what to do about an OSError, by errno
_OS_FIXES = {
    errno.EEXIST: "a file is in the way; remove it or choose another output path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; pass a file",
    errno.ENOENT: "check the path",
    errno.EACCES: "choose a location you can write to, or fix the permissions",
    errno.EPERM: "choose a location you can write to, or fix the permissions",
    errno.EROFS: "choose an output on a writable file system",
    errno.ENOSPC: "free some space or write to another disk",
    errno.EDQUOT: "free some space or write to another disk",
    errno.EFBIG: "the file is larger than this system allows; write to another file system",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def _os_error(e: OSError) -> str:
    if e.errno is None or not e.strerror:  # raised by jaxequiv with its own message
        return str(e.args[0] if len(e.args) == 1 else e)
    if e.strerror != os.strerror(e.errno):  # jaxequiv's own words for an errno, the fix included
        return e.strerror if e.filename is None else f"{e.filename}: {e.strerror}"
    what = e.strerror[0].lower() + e.strerror[1:]
    if e.filename is not None:
        what = f"{e.filename}{'' if e.filename2 is None else f' -> {e.filename2}'}: {what}"
    fix = _OS_FIXES.get(e.errno)
    return f"{what}; {fix}" if fix else what


def explain(e: BaseException, args: argparse.Namespace | None = None) -> tuple[str, int]:
    """``(message, exit status)`` for an exception that ended a command: what is wrong and how to fix it."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted; rerun the same command to resume where the job supports it", 130
    if isinstance(e, OutputLockedError):
        return str(e), 2
    if isinstance(e, OSError):
        return _os_error(e), 2
    if isinstance(e, FloatingPointError):  # sae.TrainingDiverged, train.fit's NaN loss
        lr = getattr(args, "lr", None)
        return str(e) + (f" (e.g. --lr {lr / 10:g})" if lr else ""), 2
    if isinstance(e, MemoryError):
        return "out of memory; lower --chunk-size / --batch-size or use a machine with more memory", 2
    if isinstance(e, ImportError):
        return str(e) if "pip install" in str(e) else f"{e}; pip install 'jaxequiv[dev]' provides every extra", 2
    if isinstance(e, (ValueError, KeyError, TypeError)):  # bad input, reported by the library in words
        return str(e.args[0]) if len(e.args) == 1 else str(e), 2
    return (f"unexpected {type(e).__name__}: {e} (this is a bug: rerun with `jaxequiv --debug ...` and report "
            "the traceback)"), 1


def build_parser() -> cliargs.Parser:
    parser = cliargs.Parser(prog="jaxequiv", description=__doc__.splitlines()[0],
                            epilog="Run jaxequiv COMMAND --help for a command's options.")
    parser.add_argument("--version", action="version", version=f"jaxequiv {jaxequiv.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``jaxequiv ARGV``; returns the exit status (2 for a bad command line, printed in one line)."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # --help, --version, or a bad command line (already printed)
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = " ".join([args.command] + [v for k, v in vars(args).items() if k.endswith("_command") and v])
    if unknown:  # argparse reports these for the whole program; name the command they were given to
        print(f"jaxequiv {command}: error: unrecognized arguments: {' '.join(unknown)} (see jaxequiv {command} "
              "--help)", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as e:
        if args.debug:
            raise
        message, status = explain(e, args)
        one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
        print(f"jaxequiv {command}: error: {cliargs.cli_spelling(one_line, args)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
