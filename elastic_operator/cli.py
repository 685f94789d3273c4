"""The ``elastic-operator`` command: one entry point, one module per subcommand.

Subcommand modules expose ``configure(parser)`` and ``execute(args) -> int`` and are imported
only when chosen, so ``elastic-operator crds`` stays fast and needs no cluster libraries.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# name -> (module, one-line help). Each module has configure(parser) and execute(args).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "crds": ("elastic_operator.cli", "print the CRDs generated from the API models"),
    "run": ("elastic_operator.operator", "run the ElasticJob operator against a cluster"),
    "local": ("elastic_operator.local.cli", "embedded cluster: up, apply, get, demo ..."),
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``elastic-operator crds``."""
    parser.add_argument(
        "--write",
        metavar="DIR",
        type=Path,
        help="write one YAML file per CRD into DIR instead of printing them",
    )


def execute(args: argparse.Namespace) -> int:
    """Print or write the CRDs."""
    from elastic_operator.api import crd, registry

    if args.write:
        for path in registry.write_all(args.write):
            print(f"wrote {path}")
        return 0
    sys.stdout.write("---\n".join(crd.render(c) for c in registry.all_crds()))
    return 0


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    """The parser, with only the chosen subcommand's module imported and configured."""
    parser = argparse.ArgumentParser(prog="elastic-operator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(sub_parser)  # type: ignore[attr-defined]
    return parser, module


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else argv
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    return int(module.execute(args))  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
