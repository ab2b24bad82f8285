"""artune: hyperparameter search for autoregressive language models on Ray Tune and Optuna."""

import time

__version__ = "0.1.0"

# When this process loaded artune, before the imports of whatever runs next: the clock the CLI's
# time budget counts from, so that a budget's "start-up included" includes those imports too.
LOADED_AT = time.monotonic()
