"""Processes and signals: the CLI guard, signal handling, CUDA MPS."""
