"""Look at a run in the browser (``echocam view``) or in one static file (``echocam report``).

A run is read through :mod:`echocam.bucket.storage` (a directory or an ``s3://`` prefix): the
run-level tables with DuckDB (paged and filtered on the server, so a million recordings cost one
page), each recording's ``record.json`` and images as they are asked for.  No torch here: the viewer
runs where the model stack is not installed; Pillow is used to cut tiles and thumbnails.
"""
