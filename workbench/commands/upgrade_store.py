"""``workbench upgrade-store STORE...``: convert stores of an older schema in place to the current one."""

from __future__ import annotations

import argparse

HELP = "convert results stores (*.zarr) of an older schema in place to the current one (names in docs/glossary.md)"
DESCRIPTION = (
    HELP + ". Old stores open for reading as they are (under the new names); writing into one needs "
    "this once. Only metadata (and probes' small layer coordinate) is rewritten; a store already of "
    "the current schema is left as it is."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stores", nargs="+", metavar="STORE", help="results store (*.zarr)")


def run(args: argparse.Namespace) -> int:
    from workbench import store

    for path in args.stores:
        changes = store.upgrade(path)
        if not changes:
            print(f"{path}: already {store.SCHEMA}")
        for line in changes:
            print(f"{path}: {line}")
    return 0
