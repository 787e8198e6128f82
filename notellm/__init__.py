"""NoteLLM: a retrievable LLM for note recommendation (arXiv 2403.01744), as a library.

Everything the Kubeflow components, the pipeline and the KServe models do lives here.
Heavy dependencies (torch, feast, evidently, kserve) are imported inside the modules that need them.
"""

__version__ = "0.1.0"
