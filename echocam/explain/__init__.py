"""The model and what it explains: CAMs, where their evidence is, and one recording's files.

- :mod:`.model`: the hooked ResNet-18 and the weights it loads (ImageNet, checkpoints, random);
- :mod:`.device`: the device and thread count a model runs with;
- :mod:`.cam`: class activation maps and display maps, batched;
- :mod:`.localise`: a display map's peak, evidence box and call box in seconds and Hz;
- :mod:`.render`: overlays, stitching along time, PNG / JPEG / WebP encoding;
- :mod:`.npz`: ``cam.npz`` written member by member;
- :mod:`.encoder`: a recording's files and its ok record, from its windows' arrays;
- :mod:`.pipeline`: recordings in, results out: decode, compute (on the device), encode.
"""
