"""The core: recordings in, outputs and records out.  Local mode and workers both call it.

Three stages, each with its own type: ``decode`` (CPU: sources → :class:`Decoded`), ``compute``
(device: → :class:`Computed` blocks, every window in batches) and ``finish`` (CPU: each
block into the recordings' :class:`~echocam.explain.encoder.Encoder`; results once the chunk is
done).  A *block* is ``block_batches`` forward batches: a long recording flows through
compute and finish a block at a time, never all its windows' arrays at once, and the same
batches whatever the block size, so the same outputs.  ``echocam.run.runner`` runs the stages
overlapped on successive chunks and blocks.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from echocam.bucket import records
from echocam.bucket.records import Record
from echocam.errors import EchoCamError
from echocam.explain import render
from echocam.explain.cam import CellGrid, display_maps, explain
from echocam.explain.device import resolve_device
from echocam.explain.embed import activity_maps, window_embeddings
from echocam.explain.encoder import Encoder, Result, WindowArrays, WindowBlock
from echocam.explain.localise import band_floor, peaks_and_masks
from echocam.explain.model import LoadedModel
from echocam.settings import Params, Settings, check_model_params, fingerprint
from echocam.signal import colormaps
from echocam.signal.frontend import FrontEnd, Windowed, windowed


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
    """A decoded recording and the windows cut over it."""

    index: int  # position among the chunk's sources
    windowed: Windowed
    decode_s: float


@dataclass
class Decoded:
    """A chunk of sources after the first stage: every record begun, the readable ones decoded.

    ``encoders`` and ``results`` fill as ``finish`` takes the chunk's blocks.
    """

    bases: list[Record]  # the outcome-independent record fields, one per source
    failures: dict[int, Result]  # source index → its failed result
    recordings: list[DecodedRecording]
    encoders: dict[int, Encoder] = field(default_factory=dict)  # by recording position
    results: dict[int, Result] = field(default_factory=dict)  # source index → its result


@dataclass
class Computed:
    """A block of a chunk after the device stage: some windows of some of its recordings."""

    decoded: Decoded
    parts: dict[int, WindowBlock]  # recording position (in decoded.recordings) → windows
    ended: dict[int, tuple[np.ndarray, float]]  # recordings whose last window is here →
    # (mean class probabilities over all their windows, their compute seconds)
    last: bool  # the chunk's last block


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
        block_batches: int = 1,
    ):
        check_model_params(params, model.params)  # a species model only at its own front end
        self.model, self.params = model, params
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.batch_size = batch_size or (256 if self.cuda else 32)
        self.block_batches = block_batches
        # Decoding (libsndfile, soxr) and PNG encoding (ISA-L) release the GIL: threads overlap.
        self.map = pool.map if pool is not None else map
        self.net = model.net.at_output_stride(params.output_stride).to(self.device)
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
        decoded = self.decode(sources)
        results: list[Result] = []
        for computed in self.compute(decoded):
            results = self.finish(computed)
        return results

    def decode(self, sources: Sequence[Source]) -> Decoded:
        """CPU stage 1, on the pool's threads: decode, resample and cut the windows."""
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
    def compute(self, decoded: Decoded) -> Iterator[Computed]:
        """Device stage: the chunk's windows in batches, yielded a block at a time.

        Host arrays are copied once per batch; a block's windows are views of them.  The
        batches are the same whatever ``block_batches``: windows of one length batch together
        (every window but a short recording's own), in recording and time order.
        """
        recordings = decoded.recordings
        if not recordings:
            yield Computed(decoded, {}, {}, last=True)
            return
        prob_sum = torch.zeros(len(recordings), len(self.model.class_names), device=self.device)
        groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for r, recording in enumerate(recordings):
            w = recording.windowed
            groups[w.length].extend((r, j) for j in range(len(w.starts)))
        batches = [
            (length, pairs[b0 : b0 + self.batch_size])
            for length, pairs in groups.items()
            for b0 in range(0, len(pairs), self.batch_size)
        ]
        left = [len(recording.windowed.starts) for recording in recordings]
        compute_s = [0.0] * len(recordings)
        step = max(1, self.block_batches)
        for s0 in range(0, len(batches), step):
            # (recording, window) → (its batch's host arrays, its row there): views, not copies
            rows: dict[int, dict[int, tuple[WindowArrays, int]]] = defaultdict(dict)
            for length, batch in batches[s0 : s0 + step]:
                t0 = time.perf_counter()
                host = self._batch(recordings, batch, length, prob_sum)
                share = (time.perf_counter() - t0) / len(batch)
                for i, (r, j) in enumerate(batch):
                    rows[r][j] = (host, i)
                    compute_s[r] += share
            parts = {}
            for r, got in rows.items():  # a recording's windows here are consecutive
                arrays = WindowArrays.gather([got[j] for j in sorted(got)])
                parts[r] = WindowBlock(first=min(got), arrays=arrays)
                left[r] -= len(got)
            ended = [r for r in parts if not left[r]]
            sums = prob_sum[ended].cpu().numpy() if ended else []
            yield Computed(
                decoded,
                parts,
                {
                    r: (total / len(recordings[r].windowed.starts), compute_s[r])
                    for r, total in zip(ended, sums, strict=True)
                },
                last=s0 + step >= len(batches),
            )

    def finish(self, computed: Computed) -> list[Result]:
        """CPU stage 2, on the pool's threads: encode a block's windows into its recordings'
        files; the chunk's results, in source order, after its last block (else [])."""
        decoded = computed.decoded
        done = list(self.map(partial(self._encode, computed), computed.parts))
        for r, result in zip(computed.parts, done, strict=True):
            if result is not None:
                decoded.results[decoded.recordings[r].index] = result
        if not computed.last:
            return []
        results = {**decoded.failures, **decoded.results}
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
        cut = windowed(src.data or b"", params=self.params)
        return DecodedRecording(index, cut, time.perf_counter() - t0)

    def _batch(
        self,
        recordings: list[DecodedRecording],
        batch: list[tuple[int, int]],
        length: int,
        prob_sum: torch.Tensor,
    ) -> WindowArrays:
        """One batch of (recording, window) pairs, waveforms to overlays; its host arrays."""
        p = self.params
        # Gathered straight into pinned memory on CUDA: one host copy, then an async upload.
        waves = torch.empty((len(batch), length), dtype=torch.float32, pin_memory=self.cuda)
        rows = waves.numpy()
        for i, (r, j) in enumerate(batch):
            rows[i] = recordings[r].windowed.window(j)
        db = self.frontend.db(waves.to(self.device, non_blocking=True))
        levels, _, img8 = self.frontend.colours(db)
        x = self.frontend.model_input(img8)
        # bf16 only for the forward: logits and CAMs are computed in float32
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            cb = explain(self.net, x, top_k=p.top_k, class_ids=self.class_ids)
        maps = display_maps(cb.cams, size=(db.shape[-2], db.shape[-1]), grid=CellGrid.of(p))
        ov = render.overlay(levels, maps, table=self.blend)
        # the evidence's batched half here, on the maps the overlay drew; its boxes on the host
        peak, mask = peaks_and_masks(maps, threshold=p.box_threshold)
        top = cb.probs.topk(p.top_k, dim=-1)
        owner = torch.tensor([r for r, _ in batch], device=self.device)
        prob_sum.index_add_(0, owner, cb.probs)
        out = {
            "spectrogram_db": db,
            "spectrogram_index": levels.to(torch.uint8),  # a third of the RGB's copy
            "overlay": ov,
            "class_ids": cb.class_ids,
            "logits": cb.logits.gather(1, cb.class_ids),
            "probabilities": cb.probs.gather(1, cb.class_ids),
            "top_ids": top.indices,
            "top_probs": top.values,
            "cams": cb.cams,
            "peak": peak,
            "evidence_mask": mask,
            "floor_db": band_floor(db),
        }
        if p.save_inputs:
            out["inputs"] = img8
        if "embeddings" in p.outputs:  # float16: half the copy; pooled in float32 on the host
            out["features"] = cb.features.to(torch.float16)
            out["embedding"] = window_embeddings(cb.features)
            out["activity"] = activity_maps(cb.features)  # where the call is: boxed on the host
        return WindowArrays(**self._to_host(out))

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

    def _encode(self, computed: Computed, r: int) -> Result | None:
        """Add recording ``r``'s part of ``computed`` to its encoder; its result if that part
        was its last."""
        decoded = computed.decoded
        recording = decoded.recordings[r]
        encoder = decoded.encoders.get(r)
        if encoder is None:
            w = recording.windowed
            encoder = decoded.encoders[r] = Encoder(
                audio=w.audio,
                starts=w.starts,
                length=w.length,
                base=decoded.bases[recording.index],
                params=self.params,
                class_names=self.model.class_names,
                model_sha256=self.model.sha256,
            )
        encoder.add(computed.parts[r])
        if r not in computed.ended:
            return None
        mean_probs, compute_s = computed.ended[r]
        result = encoder.close(mean_probs=mean_probs)
        del decoded.encoders[r]
        result.record["timings_s"] = {
            "decode": round(recording.decode_s, 4),
            "compute": round(compute_s, 4),
            "encode": round(encoder.seconds, 4),
        }
        return result
