"""From audio bytes to the model's input: the front end that explaining and training share.

- :mod:`.audio`: decode and resample to mono float32, with typed errors for bad input;
- :mod:`.windows`: fixed-length analysis windows;
- :mod:`.melscale`: the Slaney mel scale and filterbank (librosa's numbers, without librosa);
- :mod:`.spectrogram`: mel power in dB, batched on any device;
- :mod:`.colormaps`: magma and plasma as lookup tables;
- :mod:`.image`: dB → magma levels → 8-bit RGB → 224 × 224 normalised input;
- :mod:`.frontend`: all of it in one place (:class:`~.frontend.FrontEnd`).
"""
