"""``workbench app RUNS_DIR``: serve the Dash dashboard for a runs directory (127.0.0.1 by default)."""

from __future__ import annotations

import argparse

HELP = "serve the browser dashboard (Dash) for a runs directory"
DESCRIPTION = (
    "Serve the dashboard: query updates per RoPE pair, perturbation traces, retrieval grids, live "
    "training curves and the RoPE spectrum explorer, for the runs and stores under RUNS_DIR. "
    "It reads nothing outside RUNS_DIR and binds to 127.0.0.1 unless --host says otherwise."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs_dir",
        metavar="RUNS_DIR",
        nargs="?",
        default="runs",
        help="directory holding run directories and *.zarr stores",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (keep 127.0.0.1 unless you mean it)")
    p.add_argument("--port", type=int, default=8050, help="TCP port")
    p.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, error overlay)")


def run(args: argparse.Namespace) -> int:
    import socket

    from app import serve
    from app.paths import root_of

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    root_of(args.runs_dir)  # a missing RUNS_DIR fails here with one clear message
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise ValueError(f"cannot bind {args.host}:{args.port} ({exc.strerror}); pick another --port") from None
    serve(args.runs_dir, host=args.host, port=args.port, debug=args.debug)
    return 0
