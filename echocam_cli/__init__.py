"""The ``echocam`` command: local mode, worker, producer, status and manifest.

Flags are generated from the fields of ``Params`` and ``Settings``, so every setting has one
name: ``--window-seconds`` on the command line, ``ECHOCAM_WINDOW_SECONDS`` in the environment.
Heavy imports (torch, Celery) happen inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, get_type_hints

from echocam.settings import Params, Settings, env_name, parse

PARAM_FIELDS = [f.name for f in fields(Params)]


def _add_fields(parser: argparse.ArgumentParser, cls: type, names: list[str], title: str) -> None:
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        f, hint = by_name[name], hints[name]
        flag = "--" + name.replace("_", "-")
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_ = f"{f.metadata['help']} [{env_name(name)}; default {shown!s}]"
        if hint is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
        else:
            group.add_argument(
                flag,
                default=None,
                metavar=name.upper(),
                type=lambda raw, h=hint, n=flag: parse(h, raw, n),
                help=help_,
            )


def _pick(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in fields(cls)}


def _params(args: argparse.Namespace) -> Params:
    return Params.from_env(**_pick(args, Params))


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(**_pick(args, Settings))


def cmd_run(args: argparse.Namespace) -> int:
    from echocam.local import run_local

    summary = run_local(
        args.source, args.out, params=_params(args), settings=_settings(args), force=args.force
    )
    _print_summary(summary)
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from echocam import manifest
    from echocam.local import client_factory
    from echocam.storage import open_store

    store = open_store(args.out, client_factory=client_factory(_settings(args)))
    _print_summary(manifest.compact(store))
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    keys = ("recordings", "by_status", "by_error_code", "windows", "wall_s", "windows_per_s")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=1))
    out = summary["output"]
    print(f"outputs: {out}/<source key>/{{spectrogram.png,overlay.png,cam.npz,record.json}}")
    print(f"manifest: {out}/manifest.jsonl, {out}/manifest.parquet, {out}/summary.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echocam",
        description="Class Activation Maps on bird-recording spectrograms, over whole buckets.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="local mode: explain a file, directory or s3:// prefix in this process",
        description="Explain every audio file under SOURCE into DEST, in batches, in this "
        "process; write outputs, records and a manifest under DEST.",
    )
    run.add_argument("source", metavar="SOURCE", help="audio file, directory or s3://bucket/prefix")
    run.add_argument("--out", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    run.add_argument("--force", action="store_true", help="redo recordings that are already done")
    _add_fields(run, Params, PARAM_FIELDS, "analysis parameters (enter the fingerprint)")
    _add_fields(
        run,
        Settings,
        [
            "weights",
            "seed",
            "device",
            "batch_size",
            "threads",
            "io_threads",
            "task_size",
            "s3_endpoint_url",
            "s3_region",
            "page_size",
            "extensions",
        ],
        "runtime settings",
    )
    run.set_defaults(func=cmd_run)

    man = sub.add_parser(
        "manifest",
        help="compact the records under DEST into manifest.jsonl/.parquet and summary.json",
    )
    man.add_argument("out", metavar="DEST", help="directory or s3://bucket/prefix of a run")
    _add_fields(man, Settings, ["s3_endpoint_url", "s3_region"], "storage")
    man.set_defaults(func=cmd_manifest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear one-line error for the user; details with ECHOCAM_DEBUG
        import os

        if os.environ.get("ECHOCAM_DEBUG"):
            raise
        code = getattr(e, "code", None)
        print(f"echocam: error{f' [{code}]' if code else ''}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
