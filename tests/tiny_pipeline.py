"""The whole pipeline at test size for kfp.local runs: tiny-random backbone, small synthetic data.

One local run takes about 1-1.5 minutes on two busy cores: the modules that use these settings are slow.
"""

from __future__ import annotations

OVERRIDES = ["data.synthetic.users=80", "data.synthetic.notes=150", "data.synthetic.events=6000",
             "evaluation.ks=[10,50]", "evaluation.gate_k=50", "evaluation.generation_notes=3",
             "training.threads=1", "embedding.threads=1", "drift.sample_size=100"]
#: No challenger: these runs exercise the NoteLLM path (test_pipeline_challenger.py runs the challenger).
PARAMS = {"dataset": "synthetic", "backbone": "tiny-random", "max_steps": 2, "batch_pairs": 4,
          "overrides": OVERRIDES, "challenger": False}
