"""The review loop's core: verdicts (``echocam.bucket.reviews``) turned into labels, summaries,
per-class thresholds, and Raven selection tables turned back into verdicts.

Pure functions over rows and verdict dicts; reading a run is :mod:`echocam.review.runs`.  No
torch here, and :mod:`echocam.review.thresholds` imports no numpy at import time (the slim
producer image loads thresholds files).
"""
