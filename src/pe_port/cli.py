"""The `pe-port` command line. Errors in the user's input print one line and exit with 2."""

from __future__ import annotations

import argparse
import sys

from pe_port.config import ConfigError
from pe_port.preprocess import ImageError
from pe_port.runtime import InputError, WeightError

USER_ERRORS = (ConfigError, ImageError, InputError, WeightError, OSError)


def _demo(_args: argparse.Namespace) -> int:
    from pe_port.demo import run_demo

    error = run_demo()
    return 0 if error <= 1e-4 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pe-port", description="Perception Encoder vision models compiled with Apache TVM"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="compile PE-Core-T16-384 and run the sample image")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as err:
        print(f"pe-port: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
