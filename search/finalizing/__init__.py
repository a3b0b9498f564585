"""Finalize: retraining the best configurations, ensembles, the predictions and their record."""
