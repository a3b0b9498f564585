"""The HW04 search service: Optuna studies over speaker classifiers, and the CLI around them."""
