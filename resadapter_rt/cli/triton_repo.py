"""``resadapter-rt triton-repo``: a Triton Inference Server model repository for an export or engine directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands) -> None:
    triton = commands.add_parser("triton-repo", help="write a Triton Inference Server model repository (one model per "
                                 "component + a python-backend BLS pipeline model)")
    triton.add_argument("directory", help="export or engine directory")
    triton.add_argument("--out", required=True, help="new repository directory")
    triton.add_argument("--force", action="store_true", help="replace a repository this tool wrote")
    triton.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.triton_repo import write_triton_repository

    models = write_triton_repository(Path(args.directory), Path(args.out), force=args.force)
    print(f"Triton model repository in {args.out}: {', '.join(models)}")
    return 0
