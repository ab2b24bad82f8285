"""artune: hyperparameter search for autoregressive language models on Ray Tune and Optuna."""

__version__ = "0.1.0"
