"""artune: hyperparameter search for autoregressive language models on Ray Tune and Optuna."""

import argparse
import difflib
import time

__version__ = "0.1.0"

# When this process loaded artune, before the imports of whatever runs next: the clock the CLI's
# time budget counts from, so that a budget's "start-up included" includes those imports too.
LOADED_AT = time.monotonic()


def plural(n: int, noun: str) -> str:
    """``1 trial``, ``2 trials``: the CLIs' counts."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def stdout_closed() -> int:
    """The CLIs' answer to a BrokenPipeError (their output piped into ``head``, say): leave quietly, as a
    Unix tool does, with the status of a process that SIGPIPE ended. Standard output goes to
    /dev/null first, so that the interpreter's own flush at exit fails no more."""
    import os
    import signal
    import sys

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a bad option as one line on stderr (exit 2), as every other bad input is, instead
    of the usage block followed by the error."""

    def error(self, message: str):
        prefix = "unrecognized arguments: "
        given = message.removeprefix(prefix).split() if message.startswith(prefix) else []
        given = given[: given.index("--")] if "--" in given else given  # after a bare --, arguments are not options
        for flag in (g.partition("=")[0] for g in given if g.startswith("-")):  # argparse suggests none before 3.14
            close = difflib.get_close_matches(flag, [o for o in self._option_string_actions if o[1:2] == "-"], 1, 0.75)
            if close and close[0] != flag:
                message += f" (did you mean {close[0]}?)"
                break
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
