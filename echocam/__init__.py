"""echo-cam: Class Activation Maps on bird-recording spectrograms.

The package root stays light (no torch import), so the producer can use ``echocam.storage``,
``echocam.keys`` and ``echocam.manifest`` without pulling in the model stack.
"""

__all__ = ["explain_file", "explain_bytes", "Explanation"]


def __getattr__(name: str):
    if name in __all__:
        from echocam import api

        return getattr(api, name)
    raise AttributeError(name)
