"""``lowrank``: the umbrella app (``plugins``, ``demo``, ``methods``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_plugins(args: argparse.Namespace) -> int:
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


def _cmd_methods(args: argparse.Namespace) -> int:
    from lowrank_vision.core import list_adapters

    print("\n".join(list_adapters(include_aliases=True)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), device=args.device, plugins=not args.no_plugins)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lowrank", description="lowrank-vision: low-rank adapters for vision and 3D models")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list registered domain plugins").set_defaults(func=_cmd_plugins)
    sub.add_parser("methods", help="list adapter families").set_defaults(func=_cmd_methods)
    demo = sub.add_parser("demo", help="every adapter on a MONAI UNet and a timm ViT, then each plugin's short run")
    demo.add_argument("--out", default="outputs/demo", help="output directory (default: outputs/demo)")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.add_argument("--no-plugins", action="store_true", help="skip the plugins' short runs")
    demo.set_defaults(func=_cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
