"""Evaluation (paper section 5.1): Recall@k of related-note retrieval, generation metrics, the MiniLM
baselines, and the results report. Submodules: retrieval, textgen, minilm (imports torch), report."""
