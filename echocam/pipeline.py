"""The core: recordings in, outputs and records out.  Local mode and workers both call it."""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch

from echocam import audio, colormaps, records, render, windows
from echocam.cam import display_maps, explain
from echocam.errors import EchoCamError
from echocam.image import model_image, normalise, spectrogram_rgb
from echocam.keys import output_key
from echocam.model import LoadedModel
from echocam.settings import Params, Settings, fingerprint
from echocam.spectrogram import MelSpectrogramDB


@dataclass
class Source:
    """One recording to explain: its key relative to the input root, and its bytes."""

    key: str
    data: bytes | None = None
    size: int | None = None
    etag: str | None = None
    error: EchoCamError | None = None  # set when it could not even be read


@dataclass
class Result:
    """A recording's outputs (relative key → bytes) and its record, to be written last."""

    record: dict
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def record_key(self) -> str:
        return self.record["record_key"]


@dataclass
class _Recording:
    """A decoded recording; its windows' host arrays arrive batch by batch."""

    index: int
    audio: audio.Audio
    starts: np.ndarray  # window start samples (w,)
    length: int  # window length in samples
    decode_s: float
    compute_s: float = 0.0
    # window j → (its batch's host arrays, its row in them): views, never a per-window copy
    rows: dict[int, tuple[dict[str, np.ndarray], int]] = field(default_factory=dict)

    def windows(self, name: str) -> list[np.ndarray]:
        """Output ``name`` of every window, in time order."""
        return [host[name][i] for host, i in (self.rows[j] for j in range(len(self.starts)))]


@dataclass
class Chunk:
    """Sources on their way through the stages: records so far, decoded recordings."""

    bases: list[dict]  # the outcome-independent record fields, one per source
    results: list[Result | None]  # failed results, by source; the rest come from ``finish``
    recs: list[_Recording] = field(default_factory=list)
    prob_sum: torch.Tensor | None = None  # (sources, classes) summed window probabilities


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Explainer:
    """Holds the model and the on-device transforms; ``explain`` turns sources into results."""

    def __init__(
        self,
        model: LoadedModel,
        params: Params,
        *,
        device: str = "auto",
        batch_size: int = 0,
        compile: bool = False,
        pool: Executor | None = None,
    ):
        self.model, self.params = model, params
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.batch_size = batch_size or (256 if self.cuda else 32)
        # Decoding (libsndfile, soxr) and PNG encoding (zlib) release the GIL: threads overlap.
        self.map = pool.map if pool is not None else map
        self.net = model.net.to(self.device)
        if self.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile:
            # Inductor fuses what cuDNN leaves apart (1.4x model+CAM at batch 256 in bf16 on an
            # H100).  The per-call layer4 hook traces into one graph; the first batch compiles
            # and a second batch size recompiles once, with the batch dimension dynamic.
            self.net = torch.compile(self.net)
        self.spectrogram = MelSpectrogramDB.from_params(params).to(self.device)
        self.magma = colormaps.table("magma", self.device)
        self.plasma = colormaps.table("plasma", self.device)
        self.class_ids = _class_ids(params.classes, model.class_names)
        self.fingerprint = fingerprint(params, model.sha256)

    @classmethod
    def from_settings(
        cls, model: LoadedModel, params: Params, settings: Settings, *, pool: Executor | None = None
    ) -> Explainer:
        """The explainer that runtime ``settings`` ask for (device, batch size, compile)."""
        return cls(
            model,
            params,
            device=settings.device,
            batch_size=settings.batch_size,
            compile=settings.compile,
            pool=pool,
        )

    def base_record(self, key: str, *, size: int | None, etag: str | None) -> dict:
        """The fields of ``key``'s record that do not depend on its outcome."""
        return records.base_record(
            source_key=key,
            size=size,
            etag=etag,
            model=self.model.identity,
            fingerprint=self.fingerprint,
        )

    # -- the whole path, and its three stages ----------------------------------------------

    def explain(self, sources: Sequence[Source]) -> list[Result]:
        """Explain every source; a bad one yields a failed record, never an exception."""
        return self.finish(self.compute(self.decode(sources)))

    def decode(self, sources: Sequence[Source]) -> Chunk:
        """CPU stage 1, on the pool's threads: decode, resample and plan the windows."""
        bases = [self.base_record(s.key, size=s.size, etag=s.etag) for s in sources]
        chunk = Chunk(bases, [None] * len(sources))
        for i, decoded in enumerate(self.map(self._try_decode, range(len(sources)), sources)):
            if isinstance(decoded, _Recording):
                chunk.recs.append(decoded)
            else:
                code, message = decoded
                chunk.results[i] = Result(records.failed(bases[i], code=code, message=message))
        return chunk

    def compute(self, chunk: Chunk) -> Chunk:
        """Device stage: every window of the chunk in batches; host arrays once per batch."""
        if chunk.recs:
            chunk.prob_sum = self._compute(chunk.recs)
        return chunk

    def finish(self, chunk: Chunk) -> list[Result]:
        """CPU stage 2, on the pool's threads: stitch, encode PNG and NPZ, build the records."""
        results = list(chunk.results)
        assembled = self.map(
            lambda rec: self._assemble(rec, chunk.bases[rec.index], chunk.prob_sum[rec.index]),
            chunk.recs,
        )
        for rec, result in zip(chunk.recs, assembled, strict=True):
            results[rec.index] = result
        return [r for r in results if r is not None]

    # -- stages -----------------------------------------------------------------------------

    def _try_decode(self, index: int, src: Source) -> _Recording | tuple[str, str]:
        """The decoded recording, or (error code, message)."""
        try:
            return self._decode(index, src)
        except EchoCamError as e:
            return e.code, e.message
        except Exception as e:  # a decoder bug on one file must not sink the batch
            return "internal", f"{type(e).__name__}: {e}"

    def _decode(self, index: int, src: Source) -> _Recording:
        if src.error is not None:
            raise src.error
        t0 = time.perf_counter()
        p = self.params
        decoded = audio.decode(src.data or b"", **p.decode_options())
        n = decoded.samples.shape[0]
        window = p.window_samples
        hop = p.hop_samples
        length = min(window, n)
        starts = windows.window_starts(n, window=length, hop=hop)
        return _Recording(index, decoded, starts, length, time.perf_counter() - t0)

    @torch.inference_mode()
    def _compute(self, recs: list[_Recording]) -> torch.Tensor:
        """Run every window through the device in batches; returns summed probabilities (r, c)."""
        prob_sum = torch.zeros(
            max(r.index for r in recs) + 1, len(self.model.class_names), device=self.device
        )
        # Windows of one length batch together (every window but a short recording's own).
        groups: dict[int, list[tuple[_Recording, int]]] = defaultdict(list)
        for rec in recs:
            for j in range(len(rec.starts)):
                groups[rec.length].append((rec, j))
        for length, items in groups.items():
            for b0 in range(0, len(items), self.batch_size):
                batch = items[b0 : b0 + self.batch_size]
                t0 = time.perf_counter()
                host = self._batch(batch, length, prob_sum)
                share = (time.perf_counter() - t0) / len(batch)
                for i, (rec, j) in enumerate(batch):
                    rec.rows[j] = (host, i)
                    rec.compute_s += share
        return prob_sum.cpu()

    def _batch(
        self, batch: list[tuple[_Recording, int]], length: int, prob_sum: torch.Tensor
    ) -> dict[str, np.ndarray]:
        """One batch of windows, waveforms to overlays, on the device; its host arrays."""
        p = self.params
        # Gathered straight into pinned memory on CUDA: one host copy, then an async upload.
        waves = torch.empty((len(batch), length), dtype=torch.float32, pin_memory=self.cuda)
        rows = waves.numpy()
        for i, (rec, j) in enumerate(batch):
            rows[i] = rec.audio.samples[rec.starts[j] : rec.starts[j] + length]
        db = self.spectrogram(waves.to(self.device, non_blocking=True))
        rgb = spectrogram_rgb(db, lut=self.magma)
        img8 = model_image(rgb)
        x = normalise(img8)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        # bf16 on CUDA: the forward is ~2x faster; logits and CAMs are computed in float32
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            ex = explain(self.net, x, top_k=p.top_k, class_ids=self.class_ids)
        maps = display_maps(ex.cams, size=(db.shape[-2], db.shape[-1]))
        ov = render.overlay(rgb, maps, lut=self.plasma, alpha=p.alpha)
        top = ex.probs.topk(p.top_k, dim=-1)
        rec_idx = torch.tensor([rec.index for rec, _ in batch], device=self.device)
        prob_sum.index_add_(0, rec_idx, ex.probs)
        out = {
            "spectrogram_db": db,
            "spectrogram_rgb": rgb,
            "overlay": ov,
            "class_ids": ex.class_ids,
            "logits": ex.logits.gather(1, ex.class_ids),
            "probabilities": ex.probs.gather(1, ex.class_ids),
            "top_ids": top.indices,
            "top_probs": top.values,
            "cams": ex.cams,
        }
        if p.save_inputs:
            out["inputs"] = img8
        return self._to_host(out)

    def _to_host(self, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The one host copy per batch (CPU tensors are already there: no copy at all).

        On CUDA into pinned buffers, all copies queued before one wait: pageable copies ran at
        a fraction of the bus's speed, and the outputs are ~1.4 MB per window.
        """
        if not self.cuda:
            return {name: t.numpy() for name, t in tensors.items()}
        host = {
            name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            for name, t in tensors.items()
        }
        for name, t in tensors.items():
            host[name].copy_(t, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return {name: t.numpy() for name, t in host.items()}

    def _assemble(self, rec: _Recording, base: dict, prob_sum: torch.Tensor) -> Result:
        t0 = time.perf_counter()
        p, names = self.params, self.model.class_names
        key = base["source_key"]
        columns = np.rint(rec.starts / p.hop_length).astype(np.int64)
        spec = render.stitch(rec.windows("spectrogram_rgb"), columns)  # (m, t, 3)
        ov = render.stitch(rec.windows("overlay"), columns)  # (k, m, t, 3): a band per class
        ov = ov.reshape(-1, *ov.shape[2:])  # (k*m, t, 3)
        level = p.png_compress_level
        files = {
            output_key(key, "spectrogram.png"): render.encode_png(spec, compress_level=level),
            output_key(key, "overlay.png"): render.encode_png(ov, compress_level=level),
        }
        starts_s = rec.starts / p.sample_rate
        h = {name: np.stack(rec.windows(name)) for name in _PER_WINDOW}
        npz = io.BytesIO()
        np.savez(
            npz,
            spectrogram_db=h["spectrogram_db"],
            window_starts_s=starts_s,
            class_ids=h["class_ids"],
            logits=h["logits"],
            probabilities=h["probabilities"],
            cams=h["cams"],
            params=np.array(json.dumps(p.to_dict(), sort_keys=True)),
            model_sha256=np.array(self.model.sha256),
            class_names=np.array(names),
        )
        files[output_key(key, "cam.npz")] = npz.getvalue()
        inputs = []
        for j, img in enumerate(rec.windows("inputs") if p.save_inputs else ()):
            inputs.append(output_key(key, f"inputs/window_{j:05d}.png"))
            files[inputs[-1]] = render.encode_png(img.transpose(1, 2, 0), compress_level=level)

        def cls(i: int, prob: float, logit: float | None = None) -> dict:
            d = {"class_id": int(i), "class_name": names[i], "probability": round(float(prob), 6)}
            if logit is not None:
                d["logit"] = round(float(logit), 5)
            return d

        mean = prob_sum / len(rec.starts)
        agg = mean.topk(p.top_k)
        window_rows = []
        for j, start in enumerate(starts_s):
            row = {
                "start_s": round(float(start), 6),
                "predictions": [
                    cls(i, q) for i, q in zip(h["top_ids"][j], h["top_probs"][j], strict=True)
                ],
                "explained": [
                    cls(i, q, lg)
                    for i, q, lg in zip(
                        h["class_ids"][j], h["probabilities"][j], h["logits"][j], strict=True
                    )
                ],
            }
            window_rows.append(row)
        record = {
            **base,
            "status": "ok",
            "duration_s": round(rec.audio.duration_s, 6),
            "source_sample_rate": rec.audio.source_sample_rate,
            "source_channels": rec.audio.source_channels,
            "source_format": rec.audio.source_format,
            "sample_rate": p.sample_rate,
            "window_seconds": round(rec.length / p.sample_rate, 6),
            "n_windows": len(rec.starts),
            "windows": window_rows,
            "top_predictions": [cls(i, q) for i, q in zip(agg.indices, agg.values, strict=True)],
            "outputs": {
                "spectrogram": output_key(key, "spectrogram.png"),
                "overlay": output_key(key, "overlay.png"),
                "cam": output_key(key, "cam.npz"),
                "inputs": inputs,
            },
            "image_sizes": {
                "spectrogram": [int(spec.shape[0]), int(spec.shape[1])],
                "overlay": [int(ov.shape[0]), int(ov.shape[1])],
            },
        }
        record["timings_s"] = {
            "decode": round(rec.decode_s, 4),
            "compute": round(rec.compute_s, 4),
            "encode": round(time.perf_counter() - t0, 4),
        }
        return Result(record, files)


# Per-window arrays that go into cam.npz and the record, stacked per recording.
_PER_WINDOW = ("spectrogram_db", "class_ids", "logits", "probabilities", "top_ids", "top_probs",
               "cams")  # fmt: skip


def _class_ids(classes: Sequence[str], names: Sequence[str]) -> torch.Tensor | None:
    if not classes:
        return None
    lookup = {n: i for i, n in enumerate(names)}
    missing = [c for c in classes if c not in lookup]
    if missing:
        raise ValueError(f"unknown classes {missing}; the model's classes include {names[:5]}...")
    return torch.tensor([lookup[c] for c in classes], dtype=torch.int64)
