"""Conventions shared by every ``lowrank-*`` app.

One ``--device`` flag (default ``cpu``; ``cuda``, ``cuda:1`` ... where a GPU is wanted), one
``--threads`` flag (default 2, the CPU count the project is tested on), output folders under
``runs/<app>/<command>``, ``set_defaults(func=...)`` dispatch, and one error path: a bad
argument or a missing/corrupt input file prints one line on stderr and exits 2.

An app module only builds its parser with these helpers, turns the parsed arguments into the
plugin's config dataclass and calls ``plugins/<name>/commands.py``::

    parser, sub = make_parser("lowrank-x", __doc__)
    p = add_command(sub, "train", train_cmd, help="...")
    return run(parser, argv)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

__all__ = ["make_parser", "add_command", "add_device_options", "default_out", "run", "print_json", "UsageError"]

DEFAULT_THREADS = 2


class UsageError(ValueError):
    """Raised by a command for input the user must fix; printed as one line, exit status 2."""


def make_parser(prog: str, doc: Optional[str]) -> tuple[argparse.ArgumentParser, Any]:
    """Top-level parser with a required subcommand."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.app_prog = prog  # read by add_command for the default output folder
    return parser, sub


def add_device_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``, the same on every subcommand of every app."""
    g = p.add_argument_group("device")
    g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default cpu)")
    g.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default {DEFAULT_THREADS}; 0 keeps torch's own choice)")


def default_out(prog: str, command: str) -> str:
    """``runs/<app>/<command>``, the default output folder of every subcommand."""
    app = prog[len("lowrank-"):] if prog.startswith("lowrank-") else prog
    return str(Path("runs") / app / command)


def add_command(sub: Any, name: str, func: Callable[[argparse.Namespace], Any], *, help: str,
                out: bool = True, device: bool = True) -> argparse.ArgumentParser:
    """A subcommand dispatching to ``func(args)``, with ``--out`` (default ``runs/<app>/<name>``) and device options."""
    p = sub.add_parser(name, help=help, description=help)
    prog = getattr(sub, "app_prog", "lowrank")
    if out:
        p.add_argument("--out", default=default_out(prog, name), help="output folder (default %(default)s)")
    if device:
        add_device_options(p)
    p.set_defaults(func=func)
    return p


def print_json(obj: Any) -> None:
    """Print a result dict as indented JSON on stdout (paths and numpy numbers included)."""
    from lowrank_vision.core.files import _json_default

    print(json.dumps(obj, indent=1, default=_json_default))


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device: {device!r} asked for, but no CUDA device is visible")


def run(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> int:
    """Parse, set threads, check the device, call ``args.func(args)``; bad input -> one line on stderr, exit 2."""
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        if getattr(args, "threads", 0):
            import torch

            torch.set_num_threads(max(1, args.threads))
        if getattr(args, "device", None):
            _check_device(args.device)
        result = args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        line = " ".join(str(exc).split())
        print(f"{prog} {args.command}: error: {line}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
