"""Training species models on echocam's own front end: ``echocam train`` and ``echocam evaluate``.

Small modules, one concept each:

- :mod:`.labels`: listing labelled examples (one folder per class, or a labels CSV), the split by
  recording, the data summary a checkpoint carries;
- :mod:`.config`: what a run is told (:class:`~.config.TrainConfig`, :class:`~.config.Augment`);
- :mod:`.augment`: waveform augmentation (crop, background mix, gain) and dB masking;
- :mod:`.dataset`: class-balanced epochs, streamed from the store and decoded on a thread pool
  ahead of the device; the model inputs of a batch through
  :class:`echocam.signal.frontend.FrontEnd`;
- :mod:`.scores`: confusion matrix, precision / recall / F1, the confusion PNG;
- :mod:`.predict`: deterministic (inference) windows of examples → class probabilities;
- :mod:`.loop`: the training loop, checkpoints, resume;
- :mod:`.evaluate`: a checkpoint against a labelled source.

Nothing here imports Celery.
"""
