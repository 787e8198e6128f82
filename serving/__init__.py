"""KServe serving: the note embedder (predictor), the recommender (transformer), and the server that runs them.

- ``serving.embedder``: ``NoteEmbedder``, notes -> vectors (v1, v2 REST, v2 gRPC); ``python -m serving.embedder``.
- ``serving.recommender``: ``NoteRecommender``, note id or new note -> related notes; ``python -m serving.recommender``.
- ``serving.local``: ``serve`` (both models in one server, loopback) and ``run_server`` (any models, any host).

kserve parses ``sys.argv`` when it is imported, and argparse accepts abbreviations: ``notellm serve --config
x.yaml`` would be read as kserve's ``--configure_logging x.yaml`` and exit. So kserve is imported here, once,
with the program name only; the mains parse their own arguments (kserve's parser is their parent) and pass
every setting on explicitly.
"""

import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve  # noqa: F401
finally:
    sys.argv = _argv
del _argv
