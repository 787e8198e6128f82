"""The NoteLLM pipeline (one DAG), its compiler and its local and cluster runners."""
