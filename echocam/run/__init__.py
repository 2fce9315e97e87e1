"""Running the pipeline over stores: the one code path of local mode and the workers.

- :mod:`.runner`: chunks of source objects read, explained and written, stages overlapped;
- :mod:`.local`: ``echocam run``: a file, a directory or an ``s3://`` prefix in this process;
- :mod:`.heap`: the C heap of a long-running process.
"""
