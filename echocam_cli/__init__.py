"""The ``echocam`` command: local mode, worker, producer, status and manifest.

Flags are generated from the fields of ``Params`` and ``Settings``, so every setting has one
name: ``--window-seconds`` on the command line, ``ECHOCAM_WINDOW_SECONDS`` in the environment.
Heavy imports (torch, Celery) happen inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import fields
from typing import Any, get_args, get_type_hints

from echocam.bucket.records import version
from echocam.settings import Params, Settings, default_of, env_name, parse

PARAM_FIELDS = [f.name for f in fields(Params)]
#: Field types a flag takes a value of (others are --x/--no-x switches).
VALUE_HINTS = (int, float, str, tuple[str, ...], tuple[float, float], tuple[tuple[str, float], ...])


def _add_fields(
    parser: argparse.ArgumentParser,
    cls: type,
    names: list[str],
    title: str,
    *,
    env: bool = True,
    defaults: dict[str, Any] | None = None,
) -> None:
    """A flag for each of ``cls``'s fields ``names``, its help and default from the field (and
    its ``ECHOCAM_*`` variable, with ``env``; ``defaults``: this command's own, where they
    differ).  A field that is not a plain value (training's ``augment``) is a ``--x/--no-x``
    switch between its default and its ``off()``."""
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        f, hint = by_name[name], _plain(hints[name])
        flag = "--" + name.replace("_", "-")
        switch = hint is bool or hint not in VALUE_HINTS
        default = (defaults or {}).get(name, default_of(f))
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if switch and not isinstance(default, bool):
            shown = "on"
        elif default is None:
            shown = "none"
        where = f"{env_name(name)}; " if env else ""
        # argparse formats help with %: a literal one in a field's help must be doubled
        help_ = f"{f.metadata['help']} [{where}default {shown!s}]".replace("%", "%%")
        if switch:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
        elif cls is Params and name == "min_probability":
            group.add_argument(
                flag, default=None, metavar="P|FILE.json", type=_probability_or_file, help=help_
            )
            group.add_argument(
                "--precision",
                type=float,
                default=None,
                help="with --min-probability FILE.json from echocam review thresholds: the target "
                "precision whose thresholds to take [default 0.95]",
            )
        else:
            group.add_argument(
                flag,
                default=None,
                metavar=name.upper(),
                type=lambda raw, h=hint, n=flag: parse(h, raw, n),
                help=help_,
            )


def _plain(hint: Any) -> Any:
    """``X`` of ``X | None``; any other type hint as it is."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if type(None) in get_args(hint) and len(args) == 1 else hint


def _pick(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in fields(cls)}


def _probability_or_file(raw: str) -> float | str:
    """``--min-probability``: a probability, or the path of a thresholds JSON file."""
    try:
        return float(raw)
    except ValueError:
        return raw


def _params(args: argparse.Namespace) -> Params:
    """The run parameters of the flags (and ``ECHOCAM_*``); ``--min-probability FILE.json``
    becomes ``class_min_probability`` (its classes' minima at ``--precision``), the floor of
    the other classes staying ``ECHOCAM_MIN_PROBABILITY`` or 0."""
    picked = _pick(args, Params)
    precision = getattr(args, "precision", None)
    source = picked.get("min_probability")
    if isinstance(source, str):
        from echocam.errors import InvalidParams
        from echocam.review.thresholds import DEFAULT_PRECISION, load_thresholds

        if picked.get("class_min_probability") is not None:
            raise InvalidParams("give --min-probability FILE.json or --class-min-probability")
        per = load_thresholds(source, precision=precision or DEFAULT_PRECISION)
        picked["min_probability"], picked["class_min_probability"] = None, tuple(per.items())
    elif precision is not None:
        from echocam.errors import InvalidParams

        raise InvalidParams("--precision goes with --min-probability FILE.json")
    return Params.from_env(**picked)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(**_pick(args, Settings))


def _explicit(args: argparse.Namespace) -> set[str]:
    """Params fields the user set (flag or environment): a checkpoint's values fill the rest."""
    import os

    return {
        name
        for name in PARAM_FIELDS
        if getattr(args, name, None) is not None or os.environ.get(env_name(name))
    }


def _redo(args: argparse.Namespace):
    from echocam.bucket.protocol import Redo

    return Redo(force=args.force, failed=args.retry_failed, codes=args.codes or ())


def _print_dry_run(decisions) -> None:
    """One line a listed object: ``process<TAB>key`` or ``skip<TAB>key<TAB>reason``; a summary."""
    from collections import Counter

    todo, why = 0, Counter()
    for d in decisions:
        if d.todo:
            todo += 1
            print(f"process\t{d.item.key}")
        else:
            why[d.reason] += 1
            print(f"skip\t{d.item.key}\t{d.reason}")
    reasons = ", ".join(f"{n} {reason}" for reason, n in why.most_common())
    print(
        f"dry run: would process {todo}, skip {sum(why.values())}"
        + (f" ({reasons})" if reasons else "")
        + "; nothing was written"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from echocam.run import local

    common = dict(
        params=_params(args),
        settings=_settings(args),
        redo=_redo(args),
        limit=args.limit,
        explicit=_explicit(args),  # a checkpoint's analysis parameters fill the others
    )
    if args.dry_run:
        _print_dry_run(local.dry_run(args.source, args.out, **common))
        return 0
    _print_summary(local.run_local(args.source, args.out, **common))
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from echocam.bucket import manifest
    from echocam.bucket.storage import client_factory, open_store

    store = open_store(args.out, client_factory=client_factory(_settings(args)))
    _print_summary(manifest.compact(store, full=args.full))
    return 0


def _env_from(args: argparse.Namespace, cls: type) -> None:
    """Put flags into ``ECHOCAM_*`` variables: the Celery app reads its settings at import."""
    import os

    for name, value in _pick(args, cls).items():
        if value is not None:
            os.environ[env_name(name)] = ",".join(value) if isinstance(value, tuple) else str(value)


def cmd_worker(args: argparse.Namespace) -> int:
    _env_from(args, Settings)
    settings = _settings(args)
    from worker.app import app

    argv = [
        "worker",
        "--loglevel",
        args.loglevel,
        "-Q",
        settings.queue,
        "-E",
        "--concurrency",
        str(args.concurrency),
        "--pool",
        args.pool,
    ]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def _producer_context(args: argparse.Namespace):
    from echocam.bucket.storage import client_factory, open_store

    settings = _settings(args)
    make = client_factory(settings)
    return settings, lambda uri: open_store(uri, client_factory=make)


def cmd_produce(args: argparse.Namespace) -> int:
    _env_from(args, Settings)
    from echocam.bucket import progress
    from echocam.settings import params_for_model
    from producer import enqueue, workers
    from worker.app import app

    settings, store = _producer_context(args)
    params, redo = _params(args), _redo(args)
    names = None
    if args.model_sha256:
        model = {"arch": "resnet18", "sha256": args.model_sha256, "weights": settings.weights}
    else:
        model = workers.model_identity(app, queue=settings.queue, timeout=args.describe_timeout)
        names, trained = model.pop("class_names", None), model.pop("params", None)
        params = params_for_model(params, trained, explicit=_explicit(args))
        if isinstance(names, list):
            params.class_ids(names)  # stop here, not in every task, if the model can't answer
    src, dst = store(args.source), store(args.out)
    common = dict(model=model, params=params, settings=settings, redo=redo, limit=args.limit)
    if args.dry_run:
        _print_dry_run(enqueue.dry_run(src, dst, **common))
        return 0
    class_names = names if isinstance(names, list) else None
    result = enqueue.produce(src, dst, app=app, show=True, class_names=class_names, **common)
    print(
        f"run {result.run['run_id']}: enqueued {result.recordings} recordings in {result.tasks} "
        f"tasks; skipped {result.skipped} {redo.skipped} (fingerprint "
        f"{result.run['fingerprint'][:12]}, model {model['sha256'][:12]})"
    )
    if args.wait:
        return _print_when_done(progress.client(settings.broker_url), result.run, dst, args)
    return 0


def _print_when_done(r, run, dst, args: argparse.Namespace) -> int:
    """Wait for the run and its manifest; print its state and the summary (1 if the manifest
    failed)."""
    from echocam.bucket.manifest import SUMMARY
    from echocam.bucket.storage import read_json
    from producer import status

    final = status.wait(r, run, timeout_s=args.timeout)
    print(json.dumps(final) if getattr(args, "json", False) else status.line(final))
    if final["manifest"] == "failed":
        return 1
    if not getattr(args, "json", False):
        _print_summary(read_json(dst, SUMMARY))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _env_from(args, Settings)
    from echocam.bucket import progress
    from echocam.bucket.runs import RUN_NAME
    from echocam.bucket.storage import read_json
    from producer import status

    settings, store = _producer_context(args)
    run = read_json(store(args.out), RUN_NAME)
    if run is None:
        print(f"echocam: no run.json under {args.out}", file=sys.stderr)
        return 2
    r = progress.client(settings.broker_url)
    if args.wait:
        return _print_when_done(r, run, store(args.out), args)
    final = status.read(r, run)
    print(json.dumps(final) if args.json else status.line(final))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    import os

    from echocam.bucket.storage import client_factory
    from echocam.view.server import serve

    serve(
        args.dest,
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get("ECHOCAM_VIEW_TOKEN") or None,
        client_factory=client_factory(_settings(args)),
        review=args.review,
        **_shown_minimums(args),
    )
    return 0


def _shown_minimums(args: argparse.Namespace) -> dict[str, Any]:
    """``--min-probability P|FILE.json [--precision]`` of ``view`` and ``report``: the
    detections they show (RunData's ``min_probability``, ``class_min_probability``)."""
    from echocam.errors import InvalidParams
    from echocam.review.thresholds import DEFAULT_PRECISION, load_thresholds

    source, precision = args.min_probability, args.precision
    if isinstance(source, str):
        per = load_thresholds(source, precision=precision or DEFAULT_PRECISION)
        return {"class_min_probability": per}
    if precision is not None:
        raise InvalidParams("--precision goes with --min-probability FILE.json")
    if source is not None and not 0.0 <= source <= 1.0:
        raise InvalidParams(f"--min-probability {source}: a probability in [0, 1] or a file")
    return {"min_probability": source or 0.0}


def _add_shown_minimums(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-probability",
        default=None,
        metavar="P|FILE.json",
        type=_probability_or_file,
        help="show only detections at least this probable: one probability, or per class from "
        "a thresholds file of echocam review thresholds (or a {class: p} JSON) [default: all]",
    )
    parser.add_argument(
        "--precision",
        type=float,
        default=None,
        help="with --min-probability FILE.json: the target precision whose thresholds to take "
        "[default 0.95]",
    )


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from echocam.train.config import TRAIN_INPUT_SIZE, Augment, TrainConfig
    from echocam.train.loop import TrainInterrupted, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {k: v for k, v in _pick(args, TrainConfig).items() if v is not None}
    params = _params(args)
    if "input_size" not in _explicit(args):
        params = dataclasses.replace(params, input_size=TRAIN_INPUT_SIZE)
    augment = Augment(**{k: v for k, v in _pick(args, Augment).items() if v is not None})
    given["augment"] = augment if given.get("augment", True) else Augment.off()
    config = TrainConfig(**{**given, "source": args.source, "out": args.out})
    try:
        result = train(
            config,
            params=params,
            settings=_settings(args),
            resume=args.resume,
            progress=not args.quiet,
        )
    except TrainInterrupted as e:
        print(f"echocam train: interrupted: {e}", file=sys.stderr)
        return 130
    from echocam.train.pointing import wrong_reasons

    val = result["val"] or {}
    pointing = val.get("pointing_game")
    print(
        f"best epoch {result['best_epoch']} of {result['epochs_completed']}: validation "
        f"macro-F1 {val.get('macro_f1', float('nan')):.3f}, accuracy "
        f"{val.get('accuracy', float('nan')):.3f}"
        + ("" if pointing is None else f", pointing game {pointing:.2f}")
        + f"; checkpoint {args.out} (metrics.json and confusion.png beside it); skipped "
        f"{result['skipped'] or 'none'}"
    )
    warning = val and wrong_reasons(val["macro_f1"], pointing)
    if warning:
        print(f"echocam train: warning: {warning}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from echocam.bucket.storage import client_factory
    from echocam.view.report import write

    where = write(
        args.dest, client_factory=client_factory(_settings(args)), **_shown_minimums(args)
    )
    print(f"report: {where}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if args.distributed:
        _env_from(args, Settings)
    from echocam.api import search

    found = search(
        args.runs,
        like=args.like,
        like_detection=args.like_detection,
        like_audio=args.like_audio,
        top=args.top,
        class_name=args.class_name,
        min_similarity=args.min_similarity,
        windows=args.windows,
        weights=args.weights,
        settings=_settings(args),
        distributed=args.distributed,
        parts=args.parts,
        exclude_reviewed=(args.reviewer or True) if args.exclude_reviewed else False,
    )
    if args.out is None:
        print(found.to_csv(index=False), end="")
    elif args.out.endswith(".parquet"):
        found.to_parquet(args.out, index=False)
    else:
        found.to_csv(args.out, index=False)
    if args.out is not None:
        print(f"search: {len(found)} results in {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from echocam.train.evaluate import evaluate

    result = evaluate(
        args.source,
        out=args.out,
        params=_params(args),
        settings=_settings(args),
        labels=args.labels,
        explicit=_explicit(args),
    )
    pointing = result["pointing_game"]
    print(
        f"{result['examples']} examples ({result['windows']} windows): accuracy "
        f"{result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}"
        + ("" if pointing is None else f", pointing game {pointing:.2f}")
        + f"; skipped {result['skipped'] or 'none'}; metrics.json, confusion.json, "
        f"confusion.png and predictions.csv under {args.out}"
    )
    if result["warning"]:
        print(f"echocam evaluate: warning: {result['warning']}", file=sys.stderr)
    return 0


def _add_train(sub) -> None:
    from echocam.settings import MODEL_INPUT_FIELDS
    from echocam.train.config import TRAIN_INPUT_SIZE, Augment, TrainConfig

    analysis = [*MODEL_INPUT_FIELDS, "hop_seconds", "max_duration_s", "max_bytes"]
    storage = ["s3_endpoint_url", "s3_region", "s3_max_attempts", "page_size", "extensions"]
    tr = sub.add_parser(
        "train",
        help="train a species model (ResNet-18) on folders of clips, one folder per class",
        description="Fine-tune a ResNet-18 on the model inputs echocam computes (the same front "
        "end as inference) from SOURCE: a directory or s3://bucket/prefix with one sub-folder "
        "per class, or the keys of --labels. Writes the checkpoint after every epoch (the best "
        "so far by validation macro-F1) with metrics.json and confusion.png beside it.",
    )
    tr.add_argument("source", metavar="SOURCE", help="directory or s3://bucket/prefix")
    tr.add_argument("--out", required=True, metavar="CHECKPOINT", help="path or s3://bucket/key")
    _add_fields(
        tr,
        TrainConfig,
        [f.name for f in fields(TrainConfig) if f.name not in ("source", "out")],
        "training",
        env=False,
    )
    _add_fields(tr, Augment, [f.name for f in fields(Augment)], "augmentation", env=False)
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fields(
        tr,
        Params,
        analysis,
        "analysis parameters (stored in the checkpoint)",
        defaults={"input_size": TRAIN_INPUT_SIZE},
    )
    _add_fields(tr, Settings, ["device", "threads", "io_threads", *storage], "runtime settings")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate",
        help="accuracy, per-class precision/recall/F1 and confusion of a checkpoint on SOURCE",
        description="Predict every recording under SOURCE (one sub-folder per class, or the "
        "keys of --labels) with --weights, on inference windows; write metrics.json, "
        "confusion.json, confusion.png and predictions.csv under --out.",
    )
    ev.add_argument("source", metavar="SOURCE", help="directory or s3://bucket/prefix")
    ev.add_argument("--out", required=True, metavar="DIR", help="directory or s3://bucket/prefix")
    ev.add_argument(
        "--labels",
        metavar="CSV",
        help="key,label[,start_s,end_s[,low_hz,high_hz]] rows (path/s3://); boxes give the "
        "pointing game",
    )
    _add_fields(ev, Params, analysis, "analysis parameters (default: the checkpoint's)")
    _add_fields(
        ev,
        Settings,
        ["weights", "device", "batch_size", "threads", "io_threads", *storage],
        "runtime settings",
    )
    ev.set_defaults(func=cmd_evaluate)


def _print_summary(summary: dict[str, Any]) -> None:
    keys = ("recordings", "by_status", "by_error_code", "windows", "wall_s", "windows_per_s")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=1))
    out = summary["output"]
    kinds = (summary.get("params") or {}).get("outputs") or []
    print(f"outputs: {out}/<source key>/record.json, with its outputs' keys ({', '.join(kinds)})")
    tables = f"{out}/{{manifest,detections}}.{{jsonl|csv,parquet}}, {out}/summary.json"
    if summary.get("embeddings"):
        tables += f", {out}/embeddings.parquet"
    print(f"tables: {tables}")


def _codes(raw: str) -> tuple[str, ...]:
    from echocam.errors import ERROR_CODES

    codes = tuple(c.strip() for c in raw.split(",") if c.strip())
    unknown = [c for c in codes if c not in ERROR_CODES]
    if unknown or not codes:
        raise argparse.ArgumentTypeError(
            f"unknown error code(s) {', '.join(unknown) or raw!r}; known: {', '.join(ERROR_CODES)}"
        )
    return codes


def _positive(raw: str) -> int:
    n = int(raw)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def _add_selection(parser: argparse.ArgumentParser, *, verb: str) -> None:
    """--force, --retry-failed [--codes], --limit and --dry-run: what a run does."""
    group = parser.add_argument_group("what to do")
    redo = group.add_mutually_exclusive_group()
    redo.add_argument("--force", action="store_true", help="redo recordings that are already done")
    redo.add_argument(
        "--retry-failed",
        action="store_true",
        help="redo only the recordings whose record under DEST failed (whatever the reason, "
        "even one a plain run skips as done, such as undecodable); recordings with an ok "
        "record or no record yet are left alone (run without this flag to do those)",
    )
    group.add_argument(
        "--codes",
        type=_codes,
        default=None,
        metavar="CODE,...",
        help="with --retry-failed: only records failed with these error codes (e.g. "
        "undecodable,internal)",
    )
    group.add_argument(
        "--limit",
        type=_positive,
        default=None,
        metavar="N",
        help=f"{verb} at most N recordings that need work (the first N listed), then stop",
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help=f"list what would be {verb}ed and what skipped, and why; write nothing",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echocam",
        description="Class Activation Maps on bird-recording spectrograms, over whole buckets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="local mode: explain a file, directory or s3:// prefix in this process",
        description="Explain every audio file under SOURCE into DEST, in batches, in this "
        "process; write outputs, records and a manifest under DEST.",
    )
    run.add_argument("source", metavar="SOURCE", help="audio file, directory or s3://bucket/prefix")
    run.add_argument("--out", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    _add_selection(run, verb="process")
    _add_fields(run, Params, PARAM_FIELDS, "analysis parameters (enter the fingerprint)")
    _add_fields(
        run,
        Settings,
        [
            "weights",
            "weights_seed",
            "device",
            "batch_size",
            "compile",
            "threads",
            "io_threads",
            "chunk_size",
            "s3_endpoint_url",
            "s3_region",
            "s3_max_attempts",
            "page_size",
            "extensions",
        ],
        "runtime settings",
    )
    run.set_defaults(func=cmd_run)

    wk = sub.add_parser(
        "worker",
        help="start a Celery worker (one model per process) consuming the task queue",
        description="Start a Celery worker: `celery -A worker.app worker` with echocam's "
        "settings. Each pool process holds one hooked ResNet-18.",
    )
    wk.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=1,
        help="worker processes; each holds its own model on --device. On a GPU run several "
        "that share it: the GPU waits on CPU work, so about cores / 4 (4 on a 16-core host, as "
        "WORKER_GPU_CONCURRENCY in docker-compose.yml); on CPU, cores / --threads [default 1]",
    )
    wk.add_argument(
        "--pool",
        default="prefork",
        choices=["prefork", "solo"],
        help="Celery pool [default prefork]",
    )
    wk.add_argument("--hostname", "-n", default=None, help="node name, e.g. gpu0@%%h")
    wk.add_argument("--loglevel", "-l", default="INFO")
    _add_fields(
        wk,
        Settings,
        [
            "queue",
            "device",
            "weights",
            "weights_seed",
            "batch_size",
            "compile",
            "threads",
            "io_threads",
            "broker_url",
            "s3_endpoint_url",
            "s3_region",
            "s3_max_attempts",
            "task_soft_time_limit",
            "task_time_limit",
            "compaction_time_limit",
            "visibility_timeout",
            "max_deliveries",
            "page_size",
        ],
        "worker settings",
    )
    wk.set_defaults(func=cmd_worker)

    pr = sub.add_parser(
        "produce",
        help="enqueue the recordings under an s3:// prefix as tasks for the workers",
        description="Stream the keys under SOURCE (ListObjectsV2 pages), skip recordings whose "
        "record is current (same source ETag and run fingerprint), and enqueue tasks of "
        "--task-size recordings on Redis, with a progress bar on stderr (listed, enqueued, "
        "skipped). Needs a running worker to learn the model's sha256 (it waits up to "
        "--describe-timeout for one to start), unless --model-sha256 is given.",
    )
    pr.add_argument("source", metavar="SOURCE", help="s3://bucket/prefix of the recordings")
    pr.add_argument("--out", required=True, metavar="DEST", help="s3://bucket/prefix for outputs")
    _add_selection(pr, verb="enqueue")
    pr.add_argument(
        "--wait",
        action="store_true",
        help="show progress until the run is finished and a worker has written its manifest "
        "(exit status 1 if that failed)",
    )
    pr.add_argument("--timeout", type=float, default=None, help="give up waiting after seconds")
    pr.add_argument(
        "--model-sha256",
        default=None,
        help="the workers' model sha256 (skip asking the running workers)",
    )
    pr.add_argument(
        "--describe-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for a worker to report its model, asking every second (workers "
        "may still be starting) [default 10]",
    )
    _add_fields(pr, Params, PARAM_FIELDS, "analysis parameters (enter the fingerprint)")
    _add_fields(
        pr,
        Settings,
        [
            "queue",
            "task_size",
            "broker_url",
            "s3_endpoint_url",
            "s3_region",
            "s3_max_attempts",
            "page_size",
            "extensions",
            "io_threads",
            "weights",
        ],
        "producer settings",
    )
    pr.set_defaults(func=cmd_produce)

    st = sub.add_parser("status", help="done / failed / remaining of the run under DEST")
    st.add_argument("out", metavar="DEST", help="s3://bucket/prefix of a run")
    st.add_argument(
        "--wait",
        action="store_true",
        help="show a progress bar until the run is finished and its manifest written",
    )
    st.add_argument("--timeout", type=float, default=None, help="give up waiting after seconds")
    st.add_argument("--json", action="store_true", help="print the state as JSON")
    _add_fields(st, Settings, ["broker_url", "s3_endpoint_url", "s3_region"], "settings")
    st.set_defaults(func=cmd_status)

    # Its own parser lives in producer.exporter; main() hands it the arguments.
    sub.add_parser(
        "metrics",
        help="serve Prometheus metrics: run progress, errors, stage times, queue length",
        add_help=False,
    )

    man = sub.add_parser(
        "manifest",
        help="compact the records under DEST into manifest.jsonl/.parquet and summary.json",
    )
    man.add_argument("out", metavar="DEST", help="directory or s3://bucket/prefix of a run")
    man.add_argument(
        "--full",
        action="store_true",
        help="read every record instead of the done index and shards, and rebuild the index's "
        "segment from them (automatic for outputs written before the index)",
    )
    _add_fields(man, Settings, ["s3_endpoint_url", "s3_region"], "storage")
    man.set_defaults(func=cmd_manifest)

    view = sub.add_parser(
        "view",
        help="look at the run under DEST in the browser (gallery, recordings, sound)",
        description="Serve the run under DEST (a directory or s3://bucket/prefix) to the "
        "browser: a gallery with filters, each recording's spectrogram and CAMs with axes in s "
        "and Hz, its evidence boxes and its sound. Reads with this machine's credentials; the "
        "browser never sees them.",
    )
    view.add_argument("dest", metavar="DEST", help="directory or s3://bucket/prefix of a run")
    view.add_argument("--host", default="127.0.0.1", help="address to bind [default 127.0.0.1]")
    view.add_argument("--port", type=int, default=8765, help="port [default 8765]")
    view.add_argument(
        "--token",
        default=None,
        help="require this token (open the printed URL once; a cookie keeps it) "
        "[ECHOCAM_VIEW_TOKEN]",
    )
    view.add_argument(
        "--review",
        metavar="NAME",
        default=None,
        help="review mode: judge detections at /review as reviewer NAME; verdicts are stored "
        "under the run's _reviews/ (without it the viewer is read-only; on an address other "
        "than loopback --token is required too)",
    )
    _add_shown_minimums(view)
    _add_fields(view, Settings, ["s3_endpoint_url", "s3_region"], "storage")
    view.set_defaults(func=cmd_view)

    rep = sub.add_parser(
        "report",
        help="write a static, self-contained report.html into the run under DEST",
    )
    rep.add_argument("dest", metavar="DEST", help="directory or s3://bucket/prefix of a run")
    _add_shown_minimums(rep)
    _add_fields(rep, Settings, ["s3_endpoint_url", "s3_region"], "storage")
    rep.set_defaults(func=cmd_report)
    _add_train(sub)
    _add_search(sub)
    _add_review(sub)
    return parser


def _review_run(args: argparse.Namespace):
    from echocam.bucket.storage import client_factory
    from echocam.review.runs import open_run

    return open_run(args.run, client_factory=client_factory(_settings(args)))


def _write_out(path: str, text: str, args: argparse.Namespace) -> None:
    """``text`` into ``path`` (a file or s3://bucket/key)."""
    from echocam.bucket.storage import client_factory, open_store

    parent, _, name = path.rstrip("/").rpartition("/")
    store = open_store(parent or ".", client_factory=client_factory(_settings(args)))
    store.put(name, text.encode())


def cmd_review_export(args: argparse.Namespace) -> int:
    from echocam.review.export import label_rows, labels_csv

    run = _review_run(args)
    rows = label_rows(
        run.reviews().standing(reviewer=args.reviewer), negative_label=args.negative_label
    )
    _write_out(args.out, labels_csv(rows), args)
    labels = sorted({r["label"] for r in rows})
    print(
        f"export: {len(rows)} labelled spans ({', '.join(labels) or 'none'}) in {args.out}; "
        f"train with: echocam train {run.input or 'INPUT'} --labels {args.out}"
    )
    return 0


def cmd_review_summary(args: argparse.Namespace) -> int:
    from echocam.review.summary import summarise, summary_text

    run = _review_run(args)
    got = summarise(
        run.reviews().standing(reviewer=args.reviewer), table=run.probabilities(), bins=args.bins
    )
    if args.json:
        doc = {"run_id": run.run.get("run_id"), "bins": args.bins, "classes": got}
        print(json.dumps(doc, indent=1))
    else:
        print(summary_text(got), end="")
    return 0


def cmd_review_thresholds(args: argparse.Namespace) -> int:
    from echocam.review.thresholds import thresholds_file
    from echocam.review.verdicts import decided

    run = _review_run(args)
    final = decided(run.reviews().standing(reviewer=args.reviewer)).values()
    doc = thresholds_file(decided=final, run=run.run, table=run.probabilities())
    _write_out(args.out, json.dumps(doc, indent=1) + "\n", args)
    for name, c in doc["classes"].items():
        shown = ", ".join(
            f"{k}: {'-' if t is None else f'{t:.3f}'}" for k, t in c["thresholds"].items()
        )
        print(f"{name}: {c['yes']} yes, {c['no']} no; thresholds by precision {shown}")
    print(f"thresholds: {args.out} (use: --min-probability {args.out} --precision 0.95)")
    return 0


def cmd_review_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from echocam.review.raven import batches, key_of_table, parse_table, verdicts_of

    run = _review_run(args)
    data = Path(args.table).read_bytes() if "://" not in args.table else None
    if data is None:
        from echocam.bucket.storage import client_factory, open_store

        parent, _, name = args.table.rpartition("/")
        data, _ = open_store(parent, client_factory=client_factory(_settings(args))).get(name)
    rows = parse_table(data.decode("utf-8-sig"))
    table = run.detections()
    key = args.key
    if key is None and not all(r["file"] for r in rows):
        key = _key_of_table(args.run, args.table, {d["source_key"] for d in table}, key_of_table)
    got = verdicts_of(rows, detections=table, run=run.run, reviewer=args.reviewer, key=key)
    reviews = run.reviews()
    for batch in batches(got):
        reviews.write(batch)
    said = {k: sum(v["verdict"] == k for v in got) for k in ("yes", "no", "skip")}
    print(
        f"import: {len(got)} verdicts from {len(rows)} reviewed selections by {args.reviewer} "
        f"({said['yes']} yes, {said['no']} no, {said['skip']} skip) into {args.run}"
    )
    return 0


def _key_of_table(run: str, table: str, keys: set[str], key_of_table) -> str | None:
    """The recording whose selections.txt ``table`` is, where it lies inside the run."""
    from pathlib import Path

    if "://" in run or "://" in table:
        prefix = run.rstrip("/") + "/"
        return key_of_table(table[len(prefix) :], keys) if table.startswith(prefix) else None
    try:
        rel = Path(table).resolve().relative_to(Path(run).resolve())
    except ValueError:
        return None
    return key_of_table(rel.as_posix(), keys)


def _add_review(sub) -> None:
    rv = sub.add_parser(
        "review",
        help="verdicts on a run's detections: export labels, summary, thresholds, Raven import",
        description="Use the verdicts stored under RUN/_reviews/ (echocam view --review, or "
        "echocam review import): labels to train on, the model's precision per class, "
        "per-class thresholds for a precision. docs/guides/review.md explains the rules.",
    )
    commands = rv.add_subparsers(dest="review_command", required=True, metavar="COMMAND")
    storage = ["s3_endpoint_url", "s3_region"]

    def command(name: str, help_: str, func) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_, description=help_)
        p.add_argument("run", metavar="RUN", help="directory or s3://bucket/prefix of a run")
        p.set_defaults(func=func)
        return p

    def reviewer(p: argparse.ArgumentParser, help_: str) -> None:
        p.add_argument("--reviewer", default=None, metavar="NAME", help=help_)

    ex = command(
        "export",
        "write the verdicts as a labels CSV (key,label,start_s,end_s,low_hz,high_hz) that "
        "`echocam train INPUT --labels` reads: yes gives the class (or the corrected one) over "
        "the call box, else the evidence box; no gives --negative-label; skip gives nothing; "
        "between reviewers the last yes or no wins",
        cmd_review_export,
    )
    ex.add_argument("--out", required=True, metavar="CSV", help="path or s3://bucket/key")
    ex.add_argument(
        "--negative-label",
        default="Background",
        metavar="NAME",
        help="the label of a 'no' [default Background]",
    )
    reviewer(ex, "only this reviewer's verdicts [default: everyone's]")
    _add_fields(ex, Settings, storage, "storage")

    su = command(
        "summary",
        "per class: detections, reviewed, yes, corrected, no, skipped, the model's precision on "
        "the reviewed ones and weighted back to the run's table over probability bins",
        cmd_review_summary,
    )
    su.add_argument("--json", action="store_true", help="print JSON")
    su.add_argument(
        "--bins", type=_positive, default=10, help="probability bins of the weighting [default 10]"
    )
    reviewer(su, "only this reviewer's verdicts [default: everyone's]")
    _add_fields(su, Settings, storage, "storage")

    th = command(
        "thresholds",
        "fit verdict on probability per class (logistic) and write the thresholds for "
        "precision 0.90, 0.95 and 0.99 (null, with the reason, where the verdicts are too few)",
        cmd_review_thresholds,
    )
    th.add_argument(
        "--out", default="thresholds.json", metavar="JSON", help="[default thresholds.json]"
    )
    reviewer(th, "only this reviewer's verdicts [default: everyone's]")
    _add_fields(th, Settings, storage, "storage")

    im = command(
        "import",
        "store the verdicts of a Raven selection table that echocam wrote and a reviewer edited: "
        "its Verdict column (y, n, s, or the right class name; empty: not reviewed)",
        cmd_review_import,
    )
    im.add_argument("table", metavar="TABLE", help="the edited selection table (path or s3://)")
    im.add_argument("--reviewer", default="raven", metavar="NAME", help="[default raven]")
    im.add_argument(
        "--key",
        default=None,
        metavar="SOURCE_KEY",
        help="the recording the table is of [default: its Begin File column, or where the "
        "table lies in the run]",
    )
    _add_fields(im, Settings, storage, "storage")


def _add_search(sub) -> None:
    se = sub.add_parser(
        "search",
        help="more like this: the boxes (or windows) of runs most like one call",
        description="Rank the detections' boxes (call boxes, else evidence boxes) of the runs "
        "under RUN by cosine similarity of their embeddings to one query; exact, streamed over "
        "each run's embeddings.parquet. Writes CSV to stdout, or --out.",
    )
    se.add_argument("runs", nargs="+", metavar="RUN", help="directory or s3://bucket/prefix")
    query = se.add_mutually_exclusive_group(required=True)
    query.add_argument(
        "--like", metavar="KEY@T0-T1[@F0-F1]", help="a box in a recording of the runs (s, Hz)"
    )
    query.add_argument(
        "--like-detection", metavar="ID", help="a detection's id, KEY@WINDOW_START#CLASS"
    )
    query.add_argument(
        "--like-audio", metavar="FILE", help="an audio clip, embedded as the runs embed theirs"
    )
    se.add_argument("--top", type=int, default=10, help="how many results [default 10]")
    se.add_argument("--class", dest="class_name", default=None, help="only this class's boxes")
    se.add_argument(
        "--min-similarity", type=float, default=None, help="only results at least this similar"
    )
    se.add_argument("--windows", action="store_true", help="compare whole windows instead of boxes")
    se.add_argument(
        "--exclude-reviewed",
        action="store_true",
        help="leave out detections with a standing yes or no verdict (under the run's _reviews/)",
    )
    se.add_argument(
        "--reviewer",
        default=None,
        metavar="NAME",
        help="with --exclude-reviewed: only NAME's verdicts count [default: anyone's]",
    )
    se.add_argument(
        "--out", default=None, metavar="FILE", help="write FILE.csv or FILE.parquet instead"
    )
    se.add_argument(
        "--distributed",
        action="store_true",
        help="scan the runs' tables (in S3) on the Celery workers of ECHOCAM_BROKER_URL, each "
        "a part of the row groups, and merge their best rows here",
    )
    se.add_argument(
        "--parts", type=int, default=0, help="with --distributed: how many parts per run "
        "[default: one a row group, at most 256]",
    )  # fmt: skip
    _add_fields(
        se,
        Settings,
        ["weights", "device", "broker_url", "queue", "s3_endpoint_url", "s3_region"],
        "settings (--weights: where the runs' model is now, if it moved)",
    )
    se.set_defaults(func=cmd_search)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["metrics"]:
        from producer import exporter

        return exporter.main(argv[1:]) or 0
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


def entry() -> None:
    """The ``echocam`` command: :func:`main`, the exit handlers, then the exit itself without
    the interpreter's teardown.  Arrow's native thread pools, torn down there, now and then
    abort the process after its work is done and written ("terminate called without an active
    exception", apache/arrow#34314): seen once here, on ``echocam review thresholds`` under
    load, with the thresholds file already written."""
    import atexit
    import os

    rc = main()
    atexit._run_exitfuncs()  # logging's flush, weakref finalizers (temporary directories)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
