"""Kubeflow Pipelines components: one file per step, each a thin adapter over ``notellm.steps``.

Every component runs in the project image (``Dockerfile``): lightweight Python components with
``base_image=BASE_IMAGE`` and no kfp install, so the same component runs under ``kfp.local`` and on a cluster.
"""

BASE_IMAGE = "ghcr.io/notellm/notellm:0.1.0"
