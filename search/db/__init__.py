"""Storages: opening them, hidden passwords, SQLite files, heartbeats, the gRPC proxy, Optuna's internals."""
