"""What a training run is told: :class:`TrainConfig`, and its :class:`Augment`.

No torch here: ``echocam train --help`` builds its flags from these fields, and the CLI's help
must work where the model stack is not installed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from echocam.settings import option

#: The model input a species model is trained at unless told otherwise (``--input-size``): the
#: spectrogram unresized, whose finer CAM cells point at calls more often (measured per call
#: family: docs/guides/training.md).  ``Params.input_size``'s own default, 224, stays the one of
#: ``run`` with ImageNet weights; a species model carries its size in its checkpoint.
TRAIN_INPUT_SIZE = 0


#: How a --background-class window is chosen among its --hard-negatives candidates.
HARD_NEGATIVES_BY = ("loudness", "model")


@dataclass(frozen=True)
class Augment:
    """What to randomise; every probability in [0, 1], every range "low,high".

    Each field is an ``echocam train`` flag (``--mix-p 0.5``); ``--no-augment`` turns all off.
    """

    shift: bool = option(True, "random window position in the recording (or around the span)")
    background_p: float = option(0.8, "chance of mixing in a --background recording")
    snr_db: tuple[float, float] = option((-3.0, 20.0), "window RMS over background RMS, dB")
    hard_negatives: int = option(
        4,
        "a --background-class window of a --background recording is one of this many random "
        "ones (--hard-negatives-by): other birds, which must be no class's evidence",
    )
    hard_negatives_by: str = option(
        "loudness",
        "which of the --hard-negatives windows: 'loudness' (the loudest, RMS) or 'model' (the one "
        "the model being trained, at each epoch's start, finds most like another class)",
    )
    gain_db: tuple[float, float] = option((-6.0, 6.0), "gain on the mix, dB")
    mask_p: float = option(0.8, "chance that a window gets its time and frequency masks")
    time_masks: int = option(2, "stripes across all bands, each up to --time-mask-s wide")
    time_mask_s: float = option(0.4, "widest time mask, s")
    # none: without them the pointing game rose in every measured run, the tonal whistle's the
    # most (docs/guides/training.md, "Without frequency masks" and "Five draws")
    freq_masks: int = option(0, "stripes across all frames, each up to --freq-mask-frac tall")
    freq_mask_frac: float = option(0.08, "tallest frequency mask, a fraction of the bands")
    mix_p: float = option(
        0.0,
        "chance of adding another class's window, both classes in the target by their share: "
        "each class's evidence must then be its own call",
    )
    mix_gain_db: tuple[float, float] = option(
        (-6.0, 0.0), "the added window's RMS over this one's, dB"
    )

    def __post_init__(self) -> None:
        if self.hard_negatives_by not in HARD_NEGATIVES_BY:
            raise ValueError(
                f"--hard-negatives-by {self.hard_negatives_by!r}: one of {HARD_NEGATIVES_BY}"
            )

    @classmethod
    def off(cls) -> Augment:
        """No augmentation: the centred window, no mixing, no gain, no masks."""
        return cls(shift=False, background_p=0.0, gain_db=(0.0, 0.0), mask_p=0.0, mix_p=0.0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Augment:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class TrainConfig:
    """What to train on and how (the analysis ``Params`` and runtime ``Settings`` apart).

    Every field but ``source`` and ``out`` is an ``echocam train`` flag, generated from its
    ``help`` as the settings' flags are.
    """

    source: str  # directory or s3:// prefix, one folder per class (or keys of --labels)
    out: str  # checkpoint path or s3://bucket/key
    labels: str | None = option(
        None, "CSV of key,label[,start_s,end_s[,low_hz,high_hz]] rows (path or s3://)"
    )
    val: str | None = option(None, "a validation source instead of a split")
    val_labels: str | None = option(None, "labels CSV of --val")
    background: str | None = option(None, "unlabelled recordings to mix in")
    background_class: str = option(
        "Background",
        "a class of that name made of the --background recordings' windows, where the data has "
        "none (a class with no call makes CAMs point at the calls; '': none)",
    )
    init: str = option("imagenet", "imagenet | random | PATH | s3://bucket/key (checkpoint)")
    epochs: int = option(30, "most epochs")
    batch_size: int = option(0, "windows per step (0: 256 on CUDA, 32 on the CPU)")
    lr: float = option(1e-3, "AdamW peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_epochs: float = option(1.0, "linear warm-up, epochs")
    min_lr_fraction: float = option(0.01, "the cosine decays to lr times this")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy")
    val_fraction: float = option(0.2, "recordings of each class that validate, without --val")
    val_background_snr_db: float | None = option(
        None,
        "validation: each labelled window gets a stretch of a --background recording that "
        "validates the --background-class (one training never mixes in) at this SNR, dB "
        "(none: unmixed)",
    )
    outside_box_loss: float = option(
        0.0,
        "weight of a loss on the CAM cells away from every labelled box (--labels with "
        "start_s,end_s[,low_hz,high_hz]): no species may score above the --background-class "
        "there, so the model finds its species in the calls, not around them; every call in a "
        "labelled recording must be boxed (0: off)",
    )
    patience: int = option(5, "epochs without a better validation macro-F1 before stopping")
    target_f1: float = option(
        0.0, "stop once validation macro-F1 >= this for --target-epochs epochs (0: off)"
    )
    target_epochs: int = option(2, "see --target-f1")
    epoch_windows: int = option(0, "training windows per epoch (0: one per training example)")
    bn_windows: int = option(
        32, "batch-norm statistics: the average over an epoch's last training windows"
    )
    seed: int = option(0, "seed of the split, the order, the augmentation and a random init")
    prefetch: int = option(4, "batches decoded ahead of the device")
    decode_cache: str = option(
        "",
        "folder where recordings are kept decoded for the windows drawn from them, to reuse "
        "between runs ('': a temporary folder removed after the run; 'off': decode every window)",
    )
    augment: Augment = option(
        help="the augmentation flags below (--no-augment: none of it)",
        factory=Augment,
    )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    def recipe(self) -> dict[str, Any]:
        """:meth:`to_dict` without how this machine ran it (``RUNTIME``): what a checkpoint
        records of its training."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{**d, "augment": Augment.from_dict(d["augment"])})


#: ``TrainConfig`` fields that change how a run is carried out on a machine, not the model.
RUNTIME = ("prefetch", "decode_cache")
