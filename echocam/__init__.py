"""echo-cam: Class Activation Maps on bird-recording spectrograms, over whole buckets.

The layers, lowest first (a package imports only from those above it in this list):

- :mod:`echocam.errors`, :mod:`echocam.settings`: error codes and the one settings object;
- :mod:`echocam.bucket`: bookkeeping of a run over a store (keys, records, the done index, the
  manifest, the producer–worker protocol, progress).  No torch: the producer runs on it alone;
- :mod:`echocam.search`: "more like this", exact cosine search over runs' embeddings (no model);
- :mod:`echocam.signal`: audio → windows → mel dB → magma image → model input (the front end);
- :mod:`echocam.explain`: the hooked ResNet-18, CAMs, evidence boxes, overlays, the files and
  record of one recording, and the pipeline that computes them in batches;
- :mod:`echocam.run`: running the pipeline over stores (the runner, local mode);
- :mod:`echocam.train`, :mod:`echocam.view`: species models; looking at a run;
- :mod:`echocam.api`: the Python API (:func:`explain_file`, :func:`explain_bytes`, and
  ``echocam.api.search``).

The package root stays light (no torch import): ``from echocam import explain_file`` loads the
model stack only when called.
"""

__all__ = ["explain_file", "explain_bytes", "Explanation"]


def __getattr__(name: str):
    if name in __all__:
        from echocam import api

        return getattr(api, name)
    raise AttributeError(name)
