"""The core: recordings in, outputs and records out.  Local mode and workers both call it.

Three stages, each with its own type: ``decode`` (CPU: sources → :class:`Decoded`), ``compute``
(device: → :class:`Computed`, every window in batches) and ``finish`` (CPU: → results, through
:mod:`echocam.outputs`).  ``echocam.runner`` runs them overlapped on successive chunks.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from echocam import colormaps, outputs, records, render
from echocam.cam import display_maps, explain
from echocam.errors import EchoCamError
from echocam.frontend import FrontEnd, Planned, plan
from echocam.localise import peaks_and_masks
from echocam.model import LoadedModel
from echocam.outputs import Result
from echocam.records import Record
from echocam.settings import Params, Settings, check_model_params, fingerprint


@dataclass
class Source:
    """One recording to explain: its key relative to the input root, and its bytes."""

    key: str
    data: bytes | None = None
    size: int | None = None
    etag: str | None = None
    error: EchoCamError | None = None  # set when it could not even be read


@dataclass
class DecodedRecording:
    """A decoded recording and the windows planned over it."""

    index: int  # position among the chunk's sources
    planned: Planned
    decode_s: float


@dataclass
class Decoded:
    """A chunk of sources after the first stage: every record begun, the readable ones decoded."""

    bases: list[Record]  # the outcome-independent record fields, one per source
    failures: dict[int, Result]  # source index → its failed result
    recordings: list[DecodedRecording]


@dataclass
class Computed:
    """A chunk after the device stage: each decoded recording with its windows' arrays."""

    decoded: Decoded
    recordings: list[outputs.ComputedRecording]  # parallel to ``decoded.recordings``


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
        compile_model: bool = False,
        pool: Executor | None = None,
    ):
        check_model_params(params, model.params)  # a species model only at its own front end
        self.model, self.params = model, params
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.batch_size = batch_size or (256 if self.cuda else 32)
        # Decoding (libsndfile, soxr) and PNG encoding (ISA-L) release the GIL: threads overlap.
        self.map = pool.map if pool is not None else map
        self.net = model.net.to(self.device)
        if self.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile_model:
            # The per-call layer4 hook traces into one graph; the first batch compiles and a
            # second batch size recompiles once, with the batch dimension dynamic.
            self.net = torch.compile(self.net)
        self.frontend = FrontEnd(params, self.device)
        # the overlay's colours, plasma at alpha over magma: one table, made on the CPU so that
        # every device draws the same bytes
        magma, plasma = colormaps.table("magma"), colormaps.table("plasma")
        self.blend = colormaps.blend(magma, plasma, alpha=params.alpha).to(self.device)
        ids = params.class_ids(model.class_names)
        self.class_ids = None if ids is None else torch.tensor(ids, dtype=torch.int64)
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
            compile_model=settings.compile,
            pool=pool,
        )

    def base_record(self, key: str, *, size: int | None, etag: str | None) -> Record:
        """The fields of ``key``'s record that do not depend on its outcome."""
        return records.new(
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

    def decode(self, sources: Sequence[Source]) -> Decoded:
        """CPU stage 1, on the pool's threads: decode, resample and plan the windows."""
        bases = [self.base_record(s.key, size=s.size, etag=s.etag) for s in sources]
        decoded = Decoded(bases, {}, [])
        for i, got in enumerate(self.map(self._try_decode, range(len(sources)), sources)):
            if isinstance(got, DecodedRecording):
                decoded.recordings.append(got)
            else:
                code, message = got
                decoded.failures[i] = Result(records.failed(bases[i], code=code, message=message))
        return decoded

    @torch.inference_mode()
    def compute(self, decoded: Decoded) -> Computed:
        """Device stage: every window of the chunk in batches; host arrays once per batch."""
        recordings = decoded.recordings
        if not recordings:
            return Computed(decoded, [])
        # (recording, window) → (its batch's host arrays, its row there): views, never copies
        rows: list[dict[int, tuple[dict[str, np.ndarray], int]]] = [{} for _ in recordings]
        compute_s = [0.0] * len(recordings)
        prob_sum = torch.zeros(len(recordings), len(self.model.class_names), device=self.device)
        # Windows of one length batch together (every window but a short recording's own).
        groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for r, recording in enumerate(recordings):
            planned = recording.planned
            groups[planned.length].extend((r, j) for j in range(len(planned.starts)))
        for length, pairs in groups.items():
            for b0 in range(0, len(pairs), self.batch_size):
                batch = pairs[b0 : b0 + self.batch_size]
                t0 = time.perf_counter()
                host = self._batch(recordings, batch, length, prob_sum)
                share = (time.perf_counter() - t0) / len(batch)
                for i, (r, j) in enumerate(batch):
                    rows[r][j] = (host, i)
                    compute_s[r] += share
        prob_sum = prob_sum.cpu().numpy()
        computed = []
        for r, recording in enumerate(recordings):
            planned = recording.planned
            in_order = [rows[r][j] for j in range(len(planned.starts))]
            computed.append(
                outputs.ComputedRecording(
                    audio=planned.audio,
                    starts=planned.starts,
                    length=planned.length,
                    windows={name: [h[name][i] for h, i in in_order] for name in in_order[0][0]},
                    mean_probs=prob_sum[r] / len(planned.starts),
                    decode_s=recording.decode_s,
                    compute_s=compute_s[r],
                )
            )
        return Computed(decoded, computed)

    def finish(self, computed: Computed) -> list[Result]:
        """CPU stage 2, on the pool's threads: stitch, encode PNG and NPZ, build the records."""
        decoded = computed.decoded
        results = dict(decoded.failures)
        finished = self.map(
            lambda done, planned: self._encode(done, decoded.bases[planned.index]),
            computed.recordings,
            decoded.recordings,
        )
        for planned, result in zip(decoded.recordings, finished, strict=True):
            results[planned.index] = result
        return [results[i] for i in sorted(results)]

    # -- stages -----------------------------------------------------------------------------

    def _try_decode(self, index: int, src: Source) -> DecodedRecording | tuple[str, str]:
        """The decoded recording, or (error code, message)."""
        try:
            return self._decode(index, src)
        except EchoCamError as e:
            return e.code, e.message
        except Exception as e:  # a decoder bug on one file must not sink the chunk
            return "internal", f"{type(e).__name__}: {e}"

    def _decode(self, index: int, src: Source) -> DecodedRecording:
        if src.error is not None:
            raise src.error
        t0 = time.perf_counter()
        planned = plan(src.data or b"", params=self.params)
        return DecodedRecording(index, planned, time.perf_counter() - t0)

    def _batch(
        self,
        recordings: list[DecodedRecording],
        batch: list[tuple[int, int]],
        length: int,
        prob_sum: torch.Tensor,
    ) -> dict[str, np.ndarray]:
        """One batch of (recording, window) pairs, waveforms to overlays; its host arrays."""
        p = self.params
        # Gathered straight into pinned memory on CUDA: one host copy, then an async upload.
        waves = torch.empty((len(batch), length), dtype=torch.float32, pin_memory=self.cuda)
        rows = waves.numpy()
        for i, (r, j) in enumerate(batch):
            rows[i] = recordings[r].planned.window(j)
        db = self.frontend.db(waves.to(self.device, non_blocking=True))
        levels, rgb, img8 = self.frontend.colours(db)
        x = self.frontend.model_input(img8)
        # bf16 only for the forward: logits and CAMs are computed in float32
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            cb = explain(self.net, x, top_k=p.top_k, class_ids=self.class_ids)
        maps = display_maps(cb.cams, size=(db.shape[-2], db.shape[-1]))
        ov = render.overlay(levels, maps, table=self.blend)
        # the evidence's batched half here, on the maps the overlay drew; its boxes on the host
        peak, mask = peaks_and_masks(maps, threshold=p.box_threshold)
        top = cb.probs.topk(p.top_k, dim=-1)
        owner = torch.tensor([r for r, _ in batch], device=self.device)
        prob_sum.index_add_(0, owner, cb.probs)
        out = {
            "spectrogram_db": db,
            "spectrogram_rgb": rgb,
            "overlay": ov,
            "class_ids": cb.class_ids,
            "logits": cb.logits.gather(1, cb.class_ids),
            "probabilities": cb.probs.gather(1, cb.class_ids),
            "top_ids": top.indices,
            "top_probs": top.values,
            "cams": cb.cams,
            "peak": peak,
            "evidence_mask": mask,
        }
        if p.save_inputs:
            out["inputs"] = img8
        return self._to_host(out)

    def _to_host(self, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The one host copy per batch (CPU tensors are already there: no copy at all).

        On CUDA into pinned buffers, all copies queued before one wait: pageable copies ran at
        a fraction of the bus's speed.
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

    def _encode(self, recording: outputs.ComputedRecording, base: Record) -> Result:
        t0 = time.perf_counter()
        result = outputs.encode(
            recording,
            base,
            params=self.params,
            class_names=self.model.class_names,
            model_sha256=self.model.sha256,
        )
        result.record["timings_s"] = {
            "decode": round(recording.decode_s, 4),
            "compute": round(recording.compute_s, 4),
            "encode": round(time.perf_counter() - t0, 4),
        }
        return result
