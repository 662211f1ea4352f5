"""Command line: a thin wrapper over the Python API. ``optishear prune | eval | search``.

Each command's flags come from the configuration dataclasses (``Plan``, ``SearchConfig``) through
``optishear.codec``, so the CLI cannot drift from the API. Bad input exits with code 2 and one line naming it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import eval as eval_cmd
from . import prune as prune_cmd
from . import search as search_cmd

logger = logging.getLogger("optishear")
COMMANDS = {"prune": prune_cmd, "eval": eval_cmd, "search": search_cmd}


def add_common(p) -> None:
    p.add_argument("--model", default=None, help="local HF model directory or hub id (default: packaged SmolLM2-135M)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="optishear", description="Prune Hugging Face causal LMs without retraining.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, mod in COMMANDS.items():
        p = sub.add_parser(name, help=mod.HELP)
        add_common(p)
        mod.add_arguments(p)
    return ap


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        for k, v in obj.items():
            if not isinstance(v, (dict, list)):
                print(f"{k}: {v}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    try:
        out = COMMANDS[args.cmd].run(args)
    except (ValueError, FileNotFoundError, FloatingPointError, FileExistsError) as err:
        print(f"optishear {args.cmd}: error: {err}", file=sys.stderr)
        return 2
    _emit(out, args.json)
    return 0


__all__ = ["main", "build_parser"]
