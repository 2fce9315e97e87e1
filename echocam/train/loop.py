"""The training loop: a ResNet-18 fine-tuned on echocam's front end, checkpointed every epoch.

AdamW with a linear warm-up and a cosine decay (per step), label smoothing, class-balanced
epochs, augmentation (:mod:`.augment`), bf16 autocast and channels-last on CUDA.  After each
epoch the validation macro-F1 decides the best epoch; the checkpoint at ``out`` is always the
best so far, with ``metrics.json`` and ``confusion.png`` beside it, and ``<stem>.resume.pt``
holds what ``resume=True`` needs (written last, each file atomically).  SIGINT/SIGTERM stop at
the next batch; the files of the last complete epoch stay.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from tqdm import tqdm

from echocam.bucket.records import version
from echocam.bucket.storage import Store, client_factory, open_store
from echocam.explain.device import resolve_device, set_threads
from echocam.explain.model import (
    Checkpoint,
    HookedResNet18,
    LoadedModel,
    load_model_from,
    set_output_stride,
)
from echocam.settings import Params, Settings
from echocam.signal.frontend import FrontEnd
from echocam.train import scores
from echocam.train.config import TrainConfig
from echocam.train.dataset import Backgrounds, Loader, Skipped, balanced_order, model_inputs
from echocam.train.decoded import Decoded, decoded_for
from echocam.train.labels import (
    Labelled,
    extend_classes,
    list_folders,
    read_labels,
    split_by_recording,
    with_background_class,
)
from echocam.train.mining import mine
from echocam.train.outside import OutsideBoxes
from echocam.train.predict import Mix, predict

METRICS_NAME, CONFUSION_NAME = "metrics.json", "confusion.png"


@dataclass
class Best:
    """The best epoch so far: the weights the checkpoint holds and their validation scores."""

    epoch: int
    rank: tuple[float, float]  # (validation macro-F1, -validation loss): the larger, the better
    state_dict: dict[str, torch.Tensor]
    val: dict[str, Any] | None  # ``scores.summarise`` of the validation set; None without one


@dataclass
class TrainState:
    """Where a training run stands after its last complete epoch: what ``--resume`` restores,
    beside the weights, the optimiser and the schedule."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # a row per epoch
    best: Best | None = None
    windows_drawn: dict[str, int] = field(default_factory=dict)  # training windows per class
    skipped: dict[str, Skipped] = field(default_factory=dict)  # files that failed, by key

    def to_resume(self, *, net, opt, sched, config, params, keys_sha256) -> dict[str, Any]:
        """The resume file's contents (plain values: ``torch.load(weights_only=True)``)."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            "best": dataclasses.asdict(self.best) if self.best else None,
            "windows_drawn": self.windows_drawn,
            "skipped_objects": {k: [s.code, s.message] for k, s in self.skipped.items()},
            "net": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "train_config": config.to_dict(),
            "params": params.to_dict(),
            "keys_sha256": keys_sha256,
        }

    @classmethod
    def from_resume(cls, saved: dict[str, Any]) -> TrainState:
        best = saved["best"]
        return cls(
            epoch=saved["epoch"],
            history=saved["history"],
            best=Best(**{**best, "rank": tuple(best["rank"])}) if best else None,
            windows_drawn=saved["windows_drawn"],
            skipped={k: Skipped(k, c, m) for k, (c, m) in saved["skipped_objects"].items()},
        )


class TrainInterrupted(Exception):
    """Training stopped by SIGINT/SIGTERM; the last complete epoch's files are in place."""

    code = "interrupted"


def _split_uri(uri: str) -> tuple[str, str]:
    """(parent directory or s3 prefix, file name) of a checkpoint location."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name:
        raise ValueError(f"not a file location: {uri!r}")
    return parent or ".", name


def resume_name(out: str) -> str:
    """The resume state's name beside the checkpoint ``out``: ``<stem>.resume.pt``."""
    name = _split_uri(out)[1]
    return (name[:-3] if name.endswith(".pt") else name) + ".resume.pt"


def _read_text(uri: str, make_client) -> str:
    parent, name = _split_uri(uri)
    data, _ = open_store(parent, client_factory=make_client).get(name)
    return data.decode("utf-8-sig")


def _blob(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def build_net(
    init: str,
    class_names: list[str],
    *,
    settings: Settings,
    seed: int,
    output_stride: int = 32,
    loaded: LoadedModel | None = None,
) -> tuple[nn.Module, str]:
    """torchvision ResNet-18 for ``class_names`` from ``init``, at ``output_stride``
    (``Params.output_stride``: any init loads at either); (net, what it started from).

    ``imagenet`` and checkpoints are read by :func:`echocam.explain.model.load_model` (the same
    clear error offline), or given as ``loaded``.  The fc layer is new (seeded), except that a
    checkpoint's classes that begin ``class_names`` (in its order) keep their fc rows: a model
    fine-tuned with more classes starts from what it knew; the added rows are new.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = resnet18(weights=None, num_classes=len(class_names))
    set_output_stride(net, output_stride)
    if init == "random":
        return net, "random"
    if loaded is None:
        loaded = load_model_from(dataclasses.replace(settings, weights=init))
    state = dict(loaded.net.net.state_dict())
    old = list(loaded.class_names or [])
    fc = {k: state.pop(k) for k in ("fc.weight", "fc.bias") if k in state}
    kept = old and old == list(class_names[: len(old)]) and loaded.weights_kind == "checkpoint"
    if kept and len(fc) == 2 and fc["fc.weight"].shape[0] == len(old):
        new = net.state_dict()
        for k, rows in fc.items():
            grown = new[k].clone()
            grown[: len(old)] = rows
            state[k] = grown
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise ValueError(f"{init}: not a ResNet-18 state dict ({missing}, {unexpected})")
    return net, f"{loaded.weights_kind}:{loaded.sha256[:12]}"


def _schedule(*, total_steps: int, warmup_steps: int, floor: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks between batches; a second SIGINT stops now."""

    def __init__(self, log: Callable[[str], None]):
        self.requested, self.log, self.saved = False, log, {}

    def _handle(self, signum, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.log(f"{signal.Signals(signum).name}: stopping; the last complete epoch's files stay")

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def load_data(
    config: TrainConfig,
    *,
    settings: Settings,
    base_names: list[str] | None = None,
    background_keys: Sequence[str] = (),
) -> tuple[Store, Labelled, Store, Labelled]:
    """(train store, train examples, validation store, validation examples).

    ``base_names``: a previous model's classes (``--init CHECKPOINT``), which come first, in
    their order; the data's other classes follow, sorted.  With ``config.background_class``,
    the ``--background`` recordings ``background_keys`` are that class's examples (and split
    by recording as the others) where the data has no such class.
    """
    make = client_factory(settings)
    src = open_store(config.source, client_factory=make)
    if config.labels:
        labelled = read_labels(_read_text(config.labels, make), source=src.uri)
    else:
        labelled = list_folders(src, extensions=settings.extensions, page_size=settings.page_size)
    if base_names:
        labelled = extend_classes(labelled, base_names)
    if config.background_class and background_keys:
        labelled = with_background_class(labelled, background_keys, name=config.background_class)
    if len(labelled.class_names) < 2:
        raise ValueError(
            f"{config.source}: need at least two classes, found {labelled.class_names}"
        )
    if config.val:
        val_src = open_store(config.val, client_factory=make)
        names = labelled.class_names
        if config.val_labels:
            text = _read_text(config.val_labels, make)
            val = read_labels(text, source=val_src.uri, class_names=names)
        else:
            val = list_folders(
                val_src,
                extensions=settings.extensions,
                page_size=settings.page_size,
                class_names=names,
            )
        return src, labelled, val_src, val
    train, val = split_by_recording(labelled, val_fraction=config.val_fraction, seed=config.seed)
    return src, train, src, val


def train(
    config: TrainConfig,
    *,
    params: Params,
    settings: Settings,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> dict[str, Any]:
    """Train, checkpoint every epoch, return the metrics (also in ``metrics.json``)."""
    with decoded_for(config.decode_cache, params=params) as decoded:
        return _train(
            config, params=params, settings=settings, resume=resume, progress=progress, log=log,
            decoded=decoded,
        )  # fmt: skip


def _train(
    config: TrainConfig,
    *,
    params: Params,
    settings: Settings,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    decoded: Decoded,
) -> dict[str, Any]:
    threads = set_threads(settings.threads)
    device = resolve_device(settings.device)
    cuda = device.type == "cuda"
    batch_size = config.batch_size or (256 if cuda else 32)
    previous = None  # a checkpoint to fine-tune: its classes come first and keep their fc rows
    if config.init not in ("random", "imagenet"):
        previous = load_model_from(dataclasses.replace(settings, weights=config.init))
    base = previous.class_names if previous and previous.weights_kind == "checkpoint" else None
    if base == [f"class_{i}" for i in range(len(base or []))]:
        base = None  # a bare state dict: its classes have no names to keep
    backgrounds = None
    if config.background:
        backgrounds = Backgrounds(
            open_store(config.background, client_factory=client_factory(settings)),
            params=params,
            extensions=settings.extensions,
            decoded=decoded,
        )
    src, train_set, val_src, val_set = load_data(
        config,
        settings=settings,
        base_names=base,
        background_keys=backgrounds.keys if backgrounds else (),
    )
    val_mix = None
    if backgrounds and any(e.background for e in val_set.examples):
        # a recording that validates the background class is not mixed into training windows
        backgrounds.keys = sorted({e.key for e in train_set.examples if e.background})
        if config.val_background_snr_db is not None:
            held = sorted({e.key for e in val_set.examples if e.background})
            val_mix = Mix(held, config.val_background_snr_db)
    names = train_set.class_names
    out_store = open_store(_split_uri(config.out)[0], client_factory=client_factory(settings))
    out_name, state_name = _split_uri(config.out)[1], resume_name(config.out)

    net, started_from = build_net(
        config.init,
        names,
        settings=settings,
        seed=config.seed,
        output_stride=params.output_stride,
        loaded=previous,
    )
    if cuda:
        net = net.to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(
        net.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=cuda or None
    )
    epoch_windows = config.epoch_windows or len(train_set.examples)
    steps_per_epoch = max(1, math.ceil(epoch_windows / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        _schedule(
            total_steps=config.epochs * steps_per_epoch,
            warmup_steps=max(1, round(config.warmup_epochs * steps_per_epoch)),
            floor=config.min_lr_fraction,
        ),
    )
    data = {"train": train_set.summary(), "val": val_set.summary()}
    state = TrainState(windows_drawn=dict.fromkeys(names, 0))
    if resume:
        state = _resume(
            out_store, state_name, config=config, data=data, net=net, opt=opt, sched=sched
        )
        log(f"resuming after epoch {state.epoch} (best so far: epoch {state.best.epoch})")

    fe = FrontEnd(params, device)
    frames_per_s = params.sample_rate / params.hop_length
    labels = [e.label for e in train_set.examples]
    with ThreadPoolExecutor(settings.io_threads, thread_name_prefix="echocam-train") as pool:
        loader = Loader(
            src,
            train_set.examples,
            params=params,
            augment=config.augment,
            pool=pool,
            batch_size=batch_size,
            prefetch=config.prefetch,
            seed=config.seed,
            backgrounds=backgrounds,
            decoded=decoded,
        )
        loader.skipped.update(state.skipped)
        with _StopFlag(log) as stop:
            for epoch in range(state.epoch + 1, config.epochs + 1):
                order = balanced_order(
                    labels, n=epoch_windows, n_classes=len(names), seed=config.seed, epoch=epoch
                )
                chosen = {}
                if config.augment.hard_negatives_by == "model":
                    t0 = time.perf_counter()
                    loader.starts = mine(net, fe, loader, order, epoch=epoch, batch_size=batch_size)
                    chosen = {
                        "hard_negatives_chosen": len(loader.starts),
                        "hard_negatives_s": round(time.perf_counter() - t0, 3),
                    }
                row = _epoch(
                    net,
                    opt,
                    sched,
                    loader,
                    fe,
                    order=order,
                    epoch=epoch,
                    config=config,
                    frames_per_s=frames_per_s,
                    stop=stop,
                    progress=progress,
                    drawn=state.windows_drawn,
                    names=names,
                )
                if row is None:
                    raise TrainInterrupted(
                        f"stopped during epoch {epoch}; {config.out} holds epoch "
                        f"{state.epoch}'s result (continue with --resume)"
                    )
                val = _validate(
                    net, fe, val_src, val_set, params=params, pool=pool, batch_size=batch_size,
                    background=backgrounds.store if backgrounds else None, decoded=decoded,
                    mix=val_mix,
                )  # fmt: skip
                row.update(val["row"], **chosen)
                state.history.append(row)
                state.epoch = epoch
                rank = (row.get("val_macro_f1", 0.0), -row.get("val_loss", row["loss"]))
                improved = state.best is None or rank > state.best.rank
                if improved:
                    weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                    state.best = Best(epoch, rank, weights, val["scores"])
                state.skipped = {**loader.skipped, **val["skipped"]}
                result = _write(
                    out_store,
                    out_name=out_name,
                    state_name=state_name,
                    state=state,
                    net=net,
                    opt=opt,
                    sched=sched,
                    config=config,
                    params=params,
                    names=names,
                    data=data,
                    started_from=started_from,
                    device=device,
                    threads=threads,
                    batch_size=batch_size,
                )
                log(_line(row, epochs=config.epochs, best=improved))
                since_best = epoch - state.best.epoch
                if val["scores"] is not None and since_best >= config.patience:
                    log(f"early stop: no better validation macro-F1 for {since_best} epochs")
                    break
                if _reached(state.history, config):
                    log(
                        f"early stop: validation macro-F1 >= {config.target_f1} for "
                        f"{config.target_epochs} epochs"
                    )
                    break
                if stop.requested:
                    raise TrainInterrupted(f"stopped after epoch {epoch}; continue with --resume")
    return result


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler | None,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    label_smoothing: float,
    outside: OutsideBoxes | None = None,
    outside_weight: float = 0.0,
) -> torch.Tensor:
    """One optimiser step on inputs ``x`` (b, 3, h, w) and labels ``y`` (b,) or targets
    (b, classes); the loss.  With ``outside``, plus ``outside_weight`` times the loss of the CAM
    cells outside the batch's labelled boxes (:mod:`echocam.train.outside`).

    bf16 autocast for the forward on CUDA; the loss in float32, a detached 0-d tensor on the
    device (reading it waits for the step).
    """
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        if outside is None:
            logits = net(x)
        else:
            logits, features = HookedResNet18.around(net)(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    if outside is not None:
        loss = loss + outside_weight * outside.loss(features, net.fc)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return loss.detach()


def _reached(history: list[dict[str, Any]], config: TrainConfig) -> bool:
    """Whether the last ``target_epochs`` epochs all validated at macro-F1 >= ``target_f1``."""
    last = history[-config.target_epochs :] if config.target_epochs > 0 else []
    return (
        config.target_f1 > 0
        and len(last) == config.target_epochs
        and all(h.get("val_macro_f1", -1.0) >= config.target_f1 for h in last)
    )


class BatchNormAverage:
    """Batch-norm running statistics as the equal-weight average over an epoch's last batches.

    The default running averages (momentum 0.1) lag behind weights that change fast, which a
    short run never outgrows: validation then sees statistics of older weights, and a model
    whose weights are fine can predict one class for everything.  Re-estimating them on extra
    forward passes with the final weights ("precise BN", Wu and Johnson 2021) cost a third of the
    training time on a CPU; here the last training batches' own statistics are averaged instead
    (cumulative average, momentum None, from :meth:`start`), which costs nothing and is as current
    as those few steps.
    """

    def __init__(self, net: nn.Module):
        self.bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.momenta = [m.momentum for m in self.bns]

    def start(self) -> None:
        """From the next training forward on, average the batch statistics with equal weight."""
        for m in self.bns:
            m.reset_running_stats()
            m.momentum = None

    def restore(self) -> None:
        for m, momentum in zip(self.bns, self.momenta, strict=True):
            m.momentum = momentum


def _epoch(
    net,
    opt,
    sched,
    loader: Loader,
    fe: FrontEnd,
    *,
    order,
    epoch,
    config,
    frames_per_s,
    stop,
    progress,
    drawn,
    names,
) -> dict[str, Any] | None:
    """One pass over ``order``; None when a stop was requested mid-epoch."""
    net.train()
    gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0])
    )
    n_batches = math.ceil(len(order) / loader.batch_size)
    bn_from = n_batches - math.ceil(config.bn_windows / loader.batch_size)
    bn = BatchNormAverage(net)
    background = names.index(config.background_class) if config.background_class in names else None
    loss_sum, windows, wait = 0.0, 0, 0.0
    pending: tuple[torch.Tensor, int] | None = None  # the last step's loss, read a step later
    t0 = time.perf_counter()
    batches = loader.epoch(order, epoch=epoch)
    bar = tqdm(
        total=n_batches,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    try:
        for b in itertools.count():
            if config.bn_windows > 0 and b == max(0, bn_from):
                bn.start()
            tw = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - tw
            if batch is None:
                break
            x = model_inputs(
                fe,
                [w.samples for w in batch],
                augment=config.augment,
                generator=gen,
                frames_per_s=frames_per_s,
            )
            if any(w.mixed for w in batch):
                y = torch.from_numpy(np.stack([w.target(len(names)) for w in batch]))
                y = y.to(fe.device)
            else:
                y = torch.tensor([w.label for w in batch], device=fe.device)
            outside = None
            if config.outside_box_loss > 0:
                outside = OutsideBoxes(
                    boxes=[w.boxes for w in batch],
                    labels=[w.label for w in batch],
                    frames=[1 + w.samples.shape[0] // loader.params.hop_length for w in batch],
                    params=loader.params,
                    background=background,
                )
            loss = train_step(
                net, opt, sched, x, y, label_smoothing=config.label_smoothing,
                outside=outside, outside_weight=config.outside_box_loss,
            )  # fmt: skip
            # reading a loss waits for its step: read the previous one, so a GPU always has
            # this step queued while the host prepares the next batch
            if pending is not None:
                loss_sum += float(pending[0]) * pending[1]
            pending = (loss, len(batch))
            windows += len(batch)
            for w in batch:
                drawn[names[w.label]] += 1
            elapsed = time.perf_counter() - t0
            bar.set_postfix(
                loss=f"{loss_sum / max(1, windows - len(batch)):.3f}",
                win_s=f"{windows / elapsed:.1f}",
            )
            bar.update(1)
            if stop.requested:
                batches.close()
                return None
        if pending is not None:
            loss_sum += float(pending[0]) * pending[1]
    finally:
        bar.close()
        bn.restore()
    elapsed = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "loss": loss_sum / max(1, windows),
        "windows": windows,
        "seconds": elapsed,
        "windows_per_s": windows / elapsed if elapsed else 0.0,
        "data_wait_fraction": wait / elapsed if elapsed else 0.0,
        "lr": opt.param_groups[0]["lr"],
    }


def _validate(
    net,
    fe,
    store,
    val_set: Labelled,
    *,
    params,
    pool,
    batch_size,
    background=None,
    decoded=None,
    mix=None,
) -> dict[str, Any]:
    if not val_set.examples:
        return {"row": {}, "scores": None, "skipped": {}}
    net.eval()
    t0 = time.perf_counter()
    pred = predict(
        HookedResNet18.around(net),
        fe,
        store,
        val_set.examples,
        params=params,
        n_classes=len(val_set.class_names),
        pool=pool,
        batch_size=batch_size,
        background=background,
        decoded=decoded,
        mix=mix,
    )
    ok = pred.n_windows > 0
    y = np.array([e.label for e in val_set.examples])[ok]
    probs = pred.probs[ok]
    m = scores.confusion(y, probs.argmax(1), n_classes=len(val_set.class_names))
    s = scores.summarise(m, val_set.class_names)
    loss = float(-np.log(np.clip(probs[np.arange(y.size), y], 1e-7, 1)).mean()) if y.size else 0.0
    row = {
        "val_macro_f1": s["macro_f1"],
        "val_accuracy": s["accuracy"],
        "val_loss": loss,
        "val_seconds": time.perf_counter() - t0,
    }
    pointing = pred.pointing_game()
    if pointing is not None:
        row["val_pointing"] = pointing
        s = {**s, "pointing_game": pointing}
    return {"row": row, "scores": s, "skipped": pred.skipped}


def _line(row: dict[str, Any], *, epochs: int, best: bool) -> str:
    text = (
        f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.3f}, {row['windows_per_s']:.1f} "
        f"windows/s (data wait {100 * row['data_wait_fraction']:.0f} %), lr {row['lr']:.2e}"
    )
    if "val_macro_f1" in row:
        text += f", val macro-F1 {row['val_macro_f1']:.3f} (accuracy {row['val_accuracy']:.3f})"
    if "val_pointing" in row:
        text += f", pointing game {row['val_pointing']:.2f}"
    return text + (" *best" if best else "") + f", {row['seconds']:.0f} s"


def _skipped_counts(skipped: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped.values():
        counts[s.code] = counts.get(s.code, 0) + 1
    return counts


def _write(
    out_store: Store,
    *,
    out_name: str,
    state_name: str,
    state: TrainState,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    params: Params,
    names: list[str],
    data: dict[str, Any],
    started_from: str,
    device: torch.device,
    threads: int,
    batch_size: int,
) -> dict[str, Any]:
    """Checkpoint (best epoch), metrics.json, confusion.png, then the resume state."""
    best = state.best
    summary = {
        "best_epoch": best.epoch,
        "epochs_completed": state.epoch,
        "val": best.val,
        "history": state.history,
        "skipped": _skipped_counts(state.skipped),
        "skipped_keys": {k: [s.code, s.message] for k, s in sorted(state.skipped.items())[:1000]},
    }
    data_out = {**copy.deepcopy(data), "windows_drawn": dict(state.windows_drawn)}
    train_config = {
        **config.recipe(),
        "started_from": started_from,
        "device": str(device),
        "threads": threads,
        "batch_size_used": batch_size,
        "echocam_version": version(),
        "torch": str(torch.__version__),
    }
    checkpoint = Checkpoint(
        state_dict=best.state_dict,
        class_names=list(names),
        params=params.to_dict(),
        metrics=summary,
        train_config=train_config,
        data=data_out,
    )
    out_store.put(out_name, checkpoint.to_bytes())
    out_store.put(
        METRICS_NAME,
        (
            json.dumps({**summary, "data": data_out, "train_config": train_config}, indent=1) + "\n"
        ).encode(),
    )
    if best.val is not None:
        conf = np.array(best.val["confusion"])
        title = f"validation, epoch {best.epoch}: macro-F1 {best.val['macro_f1']:.3f}"
        out_store.put(CONFUSION_NAME, scores.confusion_png(conf, names, title=title))
    resume = state.to_resume(
        net=net,
        opt=opt,
        sched=sched,
        config=config,
        params=params,
        keys_sha256=_keys_sha256(data),
    )
    out_store.put(state_name, _blob(resume))
    return summary


def _keys_sha256(data: dict[str, Any]) -> list[str]:
    """What says the training and validation data are those of the interrupted run."""
    return [data["train"]["keys_sha256"], data["val"]["keys_sha256"]]


def _resume(out_store: Store, state_name: str, *, config, data, net, opt, sched) -> TrainState:
    try:
        raw, _ = out_store.get(state_name)
    except FileNotFoundError:
        raise FileNotFoundError(f"--resume: no {state_name} beside the checkpoint") from None
    saved = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if saved["keys_sha256"] != _keys_sha256(data):
        raise ValueError(
            "--resume: the training or validation data differ from the interrupted run's"
        )
    net.load_state_dict(saved["net"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    return TrainState.from_resume(saved)
