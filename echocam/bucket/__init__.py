"""A run's bookkeeping over a store: no torch, no model, nothing per pixel.

- :mod:`.storage`: a local directory or an S3 bucket behind one interface;
- :mod:`.keys`: output keys that never leave the output prefix;
- :mod:`.records`: the per-recording record;
- :mod:`.detections`: detections tables and the Raven / Audacity files;
- :mod:`.runs`: ``run.json``, a run's description;
- :mod:`.index`: the done index (markers, and the segments compaction folds them into);
- :mod:`.manifest`: compaction into the manifest tables and ``summary.json``;
- :mod:`.plan`: which recordings a run does (the listing merged with the done index);
- :mod:`.protocol`: the producer–worker contract and the one "is it done?" rule;
- :mod:`.progress`: run counters in Redis;
- :mod:`.chunking`: chunks of a stream, read ahead on a thread;
- :mod:`.faults`: fault injection for the reliability tests (inert unless asked).

The producer, the exporter and the viewer use this package without the model stack installed
(``tests/deploy/test_layering.py`` imports it with torch blocked).
"""
