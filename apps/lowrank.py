"""``lowrank``: the umbrella app.

    lowrank demo      every adapter family on a MONAI UNet and a timm ViT, then each plugin's short run
    lowrank plugins   the installed domain plugins (entry-point group ``lowrank_vision.plugins``)
    lowrank methods   the registered adapter families
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ._cli import add_command, make_parser, run

__all__ = ["main", "build_parser"]


def _plugins(args: argparse.Namespace) -> int:
    from lowrank_vision.plugins import discover_plugins

    plugins = discover_plugins()
    if not plugins:
        print("no plugins registered under the entry-point group 'lowrank_vision.plugins'")
        return 0
    width = max(len(n) for n in plugins)
    for name, spec in plugins.items():
        host = f" [{spec.host}]" if spec.host else ""
        print(f"{name:<{width}}  {spec.app:<18} {spec.description}{host}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from lowrank_vision.core import list_adapters

    print("\n".join(list_adapters(include_aliases=True)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), device=args.device, plugins=not args.no_plugins, only=args.only)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = make_parser("lowrank", __doc__)
    add_command(sub, "plugins", _plugins, help="list registered domain plugins", out=False, device=False)
    add_command(sub, "methods", _methods, help="list adapter families", out=False, device=False)
    demo = add_command(sub, "demo", _demo, help="every adapter family on a MONAI UNet and a timm ViT, then each plugin's short run")
    demo.set_defaults(out="outputs/demo")
    demo.add_argument("--no-plugins", action="store_true", help="skip the plugins' short runs")
    demo.add_argument("--only", nargs="+", default=None, metavar="PLUGIN", help="run only these plugins' demos")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
