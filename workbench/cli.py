"""The ``workbench`` command: one subcommand per module in ``workbench.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``workbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from workbench.user_errors import run_command

# command name -> module under workbench.commands
COMMANDS = {
    "rope": "rope",
    "model": "model",
    "train": "train",
    "tokenize": "tokenize",
    "teacher-cache": "teacher_cache",
    "eval": "eval",
    "trace": "trace",
    "updates": "updates",
    "probe": "probe",
    "kd-signal": "kd_signal",
    "position-loss": "position_loss",
    "compare": "compare",
    "app": "app",
    "demo": "demo",
}


def _available() -> dict[str, object]:
    found = {}
    for name, module in COMMANDS.items():
        try:
            found[name] = importlib.import_module(f"workbench.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"workbench.commands.{module}":
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="RoPE-KD workbench: distil long-context knowledge, perturb RoPE, trace it, browse it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available().items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return run_command(args.command, args._run, args)


if __name__ == "__main__":
    sys.exit(main())
