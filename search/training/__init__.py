"""Training one model: the loop, its step, evaluation, collapse handling, checkpoints."""
