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

from devtools import families, synthetic


def write_unseen(
    root: Path, held_paths: Sequence[Path], *, kinds: Sequence[str], per_class: int, seed: int
) -> list[synthetic.Clip]:
    """Held-out-style clips (5 s, one call) of species of ``kinds`` families under ``root``."""
    species = families.draw_species(kinds, rng=np.random.default_rng(seed))
    return synthetic.write_species(
        root,
        per_class=per_class,
        backgrounds=synthetic.backgrounds(held_paths),
        seed=seed + 7,
        duration_s=5.0,
        n_calls=1,
        snr_db=(-6.0, 6.0),
        species=species,
        noise_class=None,
        prefix="unseen",
    )


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
