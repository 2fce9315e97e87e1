"""One settings object: run parameters (they shape the outputs) and runtime settings (they don't).

Both read ``ECHOCAM_<FIELD>`` from the environment; CLI flags (generated from the same fields)
override them.  Only ``Params`` enters the run fingerprint, so changing a runtime setting
(device, batch size) never reprocesses anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from typing import Any, Self, get_type_hints

from echocam.errors import InvalidParams, ParamsMismatch

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
#: What ``--outputs`` can name per recording: the two images, ``cam.npz``, the dB spectrogram in
#: it, the Raven/Audacity files and the embeddings.  The record is always written.
OUTPUT_KINDS = ("spectrogram", "overlay", "cam", "db", "detections", "embeddings")
DEFAULT_OUTPUTS = ("spectrogram", "overlay", "cam", "detections", "embeddings")
OVERLAY_FORMATS = ("jpeg", "webp", "png")
#: ``Params.output_stride``'s choices: model-input pixels between layer4's cells
#: (``echocam.explain.model.set_output_stride``).
OUTPUT_STRIDES = (32, 16)


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field that is also a command-line flag: ``help`` is the flag's help text
    (and the configuration reference's); the default is written here and nowhere else."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's product for a mutable default)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass(frozen=True)
class Params:
    """Everything that changes a recording's outputs (with the model's sha256: the fingerprint)."""

    sample_rate: int = option(22050, "analysis sample rate, Hz (recordings are resampled to it)")
    n_fft: int = option(2048, "STFT frame length, samples")
    hop_length: int = option(200, "STFT hop, samples")
    n_mels: int = option(260, "mel bands")
    fmin: float = option(0.0, "lowest mel frequency, Hz")
    fmax: float = option(13000.0, "highest mel frequency, Hz (bands above Nyquist stay empty)")
    top_db: float = option(80.0, "dynamic range below each window's maximum, dB")
    window_seconds: float = option(5.0, "analysis window, seconds")
    input_size: int = option(
        224,
        "model input, pixels: a square of this size, a multiple of 32 (224: the notebook's, "
        "what ImageNet models saw), or 0: the spectrogram's own n_mels x frames, unresized, "
        "for finer CAM cells (echocam train's default)",
    )
    output_stride: int = option(
        32,
        "model-input pixels between the CAM's cells: 32 (ResNet-18's own) or 16 (layer4 "
        "dilated: cells half as wide and tall, about 1.7x the forward pass's compute)",
    )
    hop_seconds: float = option(0.0, "window hop, seconds (0: equal to the window)")
    top_k: int = option(1, "classes predicted (and explained, unless --classes) per window")
    classes: tuple[str, ...] = option((), "explain these class names (comma-separated) instead")
    alpha: float = option(0.5, "opacity of the CAM over the spectrogram")
    box_threshold: float = option(
        0.5, "evidence box: the region around the CAM's peak where its display map is >= this"
    )
    min_probability: float = option(
        0.0,
        "detections below this stay out of selections, labels and detection tables; or a "
        "thresholds JSON file (echocam review thresholds, or {class: probability}) giving "
        "per-class minima at --precision, other classes keeping this floor",
    )
    class_min_probability: tuple[tuple[str, float], ...] = option(
        (),
        "per-class minimum probabilities, CLASS=P,... (what --min-probability FILE.json "
        "loads): a class named here uses its own instead of min_probability",
    )
    png_compress_level: int = option(1, "PNG deflate level (ISA-L), 0 (fastest) to 3 (smallest)")
    outputs: tuple[str, ...] = option(
        DEFAULT_OUTPUTS,
        "files per recording (comma-separated): spectrogram, overlay, cam, db (the float16 dB "
        "spectrogram in cam.npz), detections (selections.txt, labels.txt), embeddings "
        "(embeddings.parquet: each window's and each detection's, for echocam search)",
    )
    overlay_format: str = option("jpeg", "overlay image: jpeg or webp (lossy) or png (lossless)")
    overlay_quality: int = option(85, "JPEG/WebP quality of the overlay, 1 to 100")
    save_inputs: bool = option(False, "also save each window's model-input PNG")
    max_duration_s: float = option(1800.0, "longest recording accepted, seconds")
    max_bytes: int = option(1024**3, "largest object accepted, bytes")

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or self.hop_seconds < 0:
            raise ValueError("window_seconds must be > 0 and hop_seconds >= 0")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.input_size < 0 or self.input_size % 32:
            raise ValueError("input_size must be 0 (the spectrogram's size) or a multiple of 32")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}")
        if not 0 <= self.png_compress_level <= 3:
            raise ValueError("png_compress_level must be 0..3")
        unknown = sorted(set(self.outputs) - set(OUTPUT_KINDS))
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; known: {', '.join(OUTPUT_KINDS)}")
        if "db" in self.outputs and "cam" not in self.outputs:
            raise ValueError("outputs: db is stored in cam.npz, so it needs cam too")
        if self.overlay_format not in OVERLAY_FORMATS:
            raise ValueError(f"overlay_format must be one of {', '.join(OVERLAY_FORMATS)}")
        if not 1 <= self.overlay_quality <= 100:
            raise ValueError("overlay_quality must be 1..100")
        for name in ("alpha", "box_threshold", "min_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        per = dict(self.class_min_probability)
        if any(not 0.0 <= p <= 1.0 for p in per.values()):
            raise ValueError("class_min_probability: each must be within [0, 1]")
        # one spelling per map (sorted by class): the fingerprint and equality see the map
        object.__setattr__(
            self, "class_min_probability", tuple((n, float(per[n])) for n in sorted(per))
        )

    def min_probability_of(self, class_name: str) -> float:
        """The minimum probability of a detection of ``class_name``: its own, else the floor."""
        return dict(self.class_min_probability).get(class_name, self.min_probability)

    @property
    def window_hop_seconds(self) -> float:
        return self.hop_seconds or self.window_seconds

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return round(self.window_hop_seconds * self.sample_rate)

    def decode_options(self) -> dict[str, Any]:
        """Keywords of ``echocam.signal.audio.decode``: target rate, one-frame minimum, caps."""
        return {
            "sample_rate": self.sample_rate,
            "min_samples": self.n_fft,
            "max_duration_s": self.max_duration_s,
            "max_bytes": self.max_bytes,
        }

    def class_ids(self, class_names: Sequence[str]) -> list[int] | None:
        """Ids of ``classes`` among a model's ``class_names`` (None: explain the top-k).

        Raises :class:`~echocam.errors.InvalidParams` when the model cannot answer these
        parameters: a class it does not know, or a top-k above its number of classes.
        """
        if self.top_k > len(class_names):
            raise InvalidParams(
                f"top_k {self.top_k} is above the model's {len(class_names)} classes"
            )
        if not self.classes:
            return None
        lookup = {n: i for i, n in enumerate(class_names)}
        missing = [c for c in self.classes if c not in lookup]
        if missing:
            raise InvalidParams(
                f"unknown classes {missing}; the model's classes include {list(class_names[:5])}"
            )
        return [lookup[c] for c in self.classes]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["outputs"] = list(self.outputs)
        d["class_min_probability"] = dict(self.class_min_probability)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for name in ("classes", "outputs"):
            if name in kw:
                kw[name] = tuple(kw[name])
        if "class_min_probability" in kw:
            kw["class_min_probability"] = tuple(dict(kw["class_min_probability"]).items())
        return cls(**kw)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Self:
        return _from_env(cls, environ, overrides)


#: The ``Params`` fields that shape a window's model input: a species model is valid only at the
#: values it was trained with (its checkpoint's ``params``).  The others (window hop, top-k,
#: rendering, caps) only change which windows are explained and how the outputs look.
MODEL_INPUT_FIELDS = (
    "sample_rate",
    "n_fft",
    "hop_length",
    "n_mels",
    "fmin",
    "fmax",
    "top_db",
    "window_seconds",
    "input_size",
    "output_stride",
)


def params_for_model(
    params: Params, trained: dict[str, Any] | None, *, explicit: Collection[str] | None = None
) -> Params:
    """``params`` with a model's training values of :data:`MODEL_INPUT_FIELDS` filled in.

    ``trained`` is the ``params`` dict of a checkpoint (None: the model carries none, and
    ``params`` is returned as is).  ``explicit`` names the fields the user asked for (flags,
    environment); None means every field.  An explicit field whose value differs from the
    trained one raises :class:`~echocam.errors.ParamsMismatch`; the others take the trained
    value.
    """
    if not trained:
        return params
    # a checkpoint saved before a field existed was trained at that field's earlier value
    earlier = {n: LATER_PARAMS[n] for n in MODEL_INPUT_FIELDS if n in LATER_PARAMS}
    wanted = {**earlier, **{n: trained[n] for n in MODEL_INPUT_FIELDS if n in trained}}
    asked = set(MODEL_INPUT_FIELDS if explicit is None else explicit)
    differ = {n: v for n, v in wanted.items() if n in asked and getattr(params, n) != v}
    if differ:
        raise ParamsMismatch(_mismatch_message(params, differ))
    return dataclasses.replace(params, **wanted)


def check_model_params(params: Params, trained: dict[str, Any] | None) -> None:
    """Raise :class:`~echocam.errors.ParamsMismatch` if ``params`` differ from the training ones."""
    params_for_model(params, trained, explicit=None)


def _mismatch_message(params: Params, differ: dict[str, Any]) -> str:
    pairs = ", ".join(f"{n} {getattr(params, n)!r} (trained: {v!r})" for n, v in differ.items())
    flags = " ".join(f"--{n.replace('_', '-')} {v}" for n, v in differ.items())
    return (
        f"the model was trained with other analysis parameters: {pairs}. Its inputs would not "
        f"be what it learned from; run without these settings (or with {flags}), or train a "
        "model at the parameters you want"
    )


@dataclass(frozen=True)
class Settings:
    """Where things are and how to run: never part of the fingerprint."""

    weights: str = option("imagenet", "imagenet | random | PATH | s3://bucket/key (checkpoint)")
    weights_seed: int = option(0, "seed of --weights random")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    batch_size: int = option(0, "windows per forward pass (0: 256 on CUDA, 32 on CPU)")
    compile: bool = option(False, "torch.compile the model (faster on GPUs; first batches compile)")
    threads: int = option(0, "torch threads per process (0: cores / worker processes)")
    io_threads: int = option(8, "threads for downloads, decoding, PNG/NPZ encoding and uploads")
    task_size: int = option(16, "recordings per task (distributed)")
    chunk_size: int = option(16, "recordings read, explained and written together (local mode)")
    broker_url: str = option("redis://127.0.0.1:6379/0", "Celery broker (Redis) URL")
    s3_endpoint_url: str = option("", "S3 endpoint (MinIO, SeaweedFS, ...); empty: AWS")
    s3_region: str = option("", "S3 region; empty: from the AWS configuration")
    s3_max_attempts: int = option(8, "attempts per S3 request (backoff with jitter between)")
    queue: str = option("echocam", "Celery queue name")
    task_soft_time_limit: int = option(600, "seconds before a task's recordings fail with timeout")
    task_time_limit: int = option(720, "seconds before a task's process is killed")
    compaction_time_limit: int = option(
        0,
        "seconds before a run-end compaction is stopped (`echocam manifest` redoes it; 0: nine"
        " tenths of visibility_timeout)",
    )
    visibility_timeout: int = option(7200, "seconds before Redis redelivers an unacked task")
    max_deliveries: int = option(3, "deliveries of a task that kills its worker before it fails")
    page_size: int = option(1000, "keys per ListObjectsV2 page")
    extensions: tuple[str, ...] = option(AUDIO_EXTENSIONS, "audio file extensions to process")

    def __post_init__(self) -> None:
        if not 0 < self.task_soft_time_limit < self.task_time_limit < self.visibility_timeout:
            raise ValueError(
                "need 0 < task_soft_time_limit < task_time_limit < visibility_timeout "
                "(a task must never be redelivered while it is still running)"
            )
        if not 0 <= self.compaction_time_limit < self.visibility_timeout:
            raise ValueError(
                "need 0 <= compaction_time_limit < visibility_timeout (a compaction must never "
                "be redelivered while it is still running)"
            )

    @property
    def compaction_limits_s(self) -> tuple[int, int]:
        """(soft, hard) time limit of a run-end compaction, seconds."""
        hard = self.compaction_time_limit or int(0.9 * self.visibility_timeout)
        return max(1, int(0.95 * hard)), hard

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Self:
        return _from_env(cls, environ, overrides)


def env_name(field_name: str) -> str:
    return f"ECHOCAM_{field_name.upper()}"


def _from_env(cls: type, environ: dict[str, str] | None, overrides: dict[str, Any]) -> Any:
    env = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in fields(cls):
        raw = env.get(env_name(f.name))
        if raw:
            kw[f.name] = parse(hints[f.name], raw, env_name(f.name))
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**kw)


def parse(hint: Any, raw: str, name: str) -> Any:
    """Parse a string for a field of type ``hint`` (bool, int, float, str, tuple of str, or a
    "low,high" pair of floats)."""
    try:
        if hint is bool:
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if hint in (int, float, str):
            return hint(raw)
        if hint == tuple[float, float]:
            low, high = (float(s) for s in raw.split(","))
            return (low, high)
        if hint == tuple[tuple[str, float], ...]:  # CLASS=P,CLASS=P
            pairs = [s.rpartition("=") for s in raw.split(",") if s.strip()]
            if any(not eq or not name.strip() for name, eq, _ in pairs):
                raise ValueError(raw)
            return tuple((name.strip(), float(p)) for name, _, p in pairs)
        return tuple(s.strip() for s in raw.split(",") if s.strip())  # tuple[str, ...]
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not a valid {getattr(hint, '__name__', hint)}") from e


#: Parameters added after runs were first fingerprinted, and the value every earlier run had:
#: at that value a parameter stays out of the fingerprint, so those runs' outputs stay done.
LATER_PARAMS = {"input_size": 224, "output_stride": 32, "class_min_probability": {}}


def fingerprint(params: Params, model_sha256: str) -> str:
    """Run fingerprint: sha256 over the model identity and every output-shaping parameter."""
    shaping = {
        k: v for k, v in params.to_dict().items() if k not in LATER_PARAMS or v != LATER_PARAMS[k]
    }
    blob = json.dumps({"model_sha256": model_sha256, "params": shaping}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
