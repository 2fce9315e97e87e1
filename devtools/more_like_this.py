"""How well "more like this" finds the same call type: precision@k of ``echocam search`` from
one example call, over a run of synthetic clips whose species are known.

Every clip of a species is a query in turn (its detection: the box embedding, or with
``windows`` its window's); a result counts when its clip is of the query's species.  The
query's own clip never counts.  Used by ``benchmarks/bench_search.py`` and the search tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from devtools import families, leave_out, synthetic


def write_unseen(
    root: Path, held_paths: Sequence[Path], *, kinds: Sequence[str], per_class: int, seed: int
) -> list[synthetic.Clip]:
    """Held-out clips (``leave_out.write_heldout``) of a species of each of the ``kinds``
    families, under ``root``: call types a model trained on other families never saw."""
    species = families.draw_species(kinds, rng=np.random.default_rng(seed))
    return leave_out.write_heldout(
        root, species, held_paths, per_class=per_class, seed=seed + 7, noise_class=None,
        prefix="unseen",
    )  # fmt: skip


def precision_at_k(run: str | Path, *, k: int = 10, windows: bool = False) -> dict[str, float]:
    """Mean precision@k over every clip of each species as the query: species → precision.

    Species are the clips' folders (``species/name.wav``); clips without a call (the
    Background folder) are neither queries nor species.
    """
    from echocam.bucket.embeddings import vectors
    from echocam.search import scan

    table = pq.read_table(Path(run, "embeddings.parquet"))
    is_window = pc.is_null(table.column("class_name"))
    rows = table.filter(is_window if windows else pc.invert(is_window))
    keys = rows.column("source_key").to_pylist()
    species = [key.split("/")[0] for key in keys]
    found: dict[str, list[float]] = {}
    for i, key in enumerate(keys):
        if species[i] == synthetic.NOISE_CLASS:
            continue
        query = vectors(rows.slice(i, 1))[0]
        others = rows.filter(pc.not_equal(rows.column("source_key"), key))
        best = scan(others.to_batches(), query, top=k, windows=windows)
        hits = [s.split("/")[0] == species[i] for s in best.column("source_key").to_pylist()]
        found.setdefault(species[i], []).append(sum(hits) / k)
    return {name: float(np.mean(p)) for name, p in sorted(found.items())}


def truth_boxes(calls_csvs: Sequence[Path]) -> dict[str, tuple[float, float, float, float]]:
    """Each clip's call box (s, s, Hz, Hz) from ``synthetic.write_calls_csv`` files."""
    import csv

    out = {}
    for path in calls_csvs:
        with Path(path).open() as f:
            for row in csv.DictReader(f):
                out[row["key"]] = tuple(
                    float(row[n]) for n in ("start_s", "end_s", "low_hz", "high_hz")
                )
    return out


def precision_drawn(
    run: str | Path, src: Path, boxes: dict[str, tuple], *, k: int = 10
) -> dict[str, float]:
    """:func:`precision_at_k` as if every call's box were drawn by hand (``--like``): each clip
    with a call is embedded under its true box by the run's model; clips without one keep their
    detection's vector."""
    import json

    from echocam.bucket.embeddings import vectors
    from echocam.explain.model import load_model
    from echocam.explain.query import box_vector
    from echocam.search import Box
    from echocam.settings import Params

    described = json.loads(Path(run, "run.json").read_text())
    model = load_model(described["model"]["weights"])
    params = Params.from_dict(described["params"])
    table = pq.read_table(Path(run, "embeddings.parquet"))
    rows = table.filter(pc.invert(pc.is_null(table.column("class_name"))))
    keys = rows.column("source_key").to_pylist()
    stored = vectors(rows).astype(np.float32)
    v = np.stack([
        box_vector(model, params, (src / key).read_bytes(), Box(key, *boxes[key]))
        if key in boxes else stored[i]
        for i, key in enumerate(keys)
    ])  # fmt: skip
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    species = np.array([key.split("/")[0] for key in keys])
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    found: dict[str, list[float]] = {}
    for i in np.flatnonzero(species != synthetic.NOISE_CLASS):
        best = np.argsort(-sims[i], kind="stable")[:k]
        found.setdefault(species[i], []).append(float(np.mean(species[best] == species[i])))
    return {name: float(np.mean(p)) for name, p in sorted(found.items())}
