"""The corpus a search's trials train on: encoded once by the driver, checked against every config of the space."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from artune.errors import CorpusError, NotFetched, SearchError, UnknownTokenError
from artune.search.plan import Mode, Plan

if TYPE_CHECKING:
    from artune.data import Corpus


def load_plan_corpus(plan: Plan, fetch: bool = True) -> Corpus:
    """The corpus every trial trains on, encoded once, and checked against every setting the space can give:
    the windows and batches fit, the prompt's tokens are in its vocabulary. (``fetch``: see load_corpus.)"""
    from artune.data import TINY_SHAKESPEARE, check_fits, load_corpus
    from artune.tokenizers import get_tokenizer

    space = plan.space
    tokenizer = space.baseline("tokenizer")
    dataset = space.baseline("dataset")
    source = plan.manifest.corpus.get("source")
    moved = dataset != TINY_SHAKESPEARE and not Path(dataset).expanduser().is_file()
    if plan.mode is not Mode.NEW and moved and source and Path(source).is_file():
        # a corpus file the space names relative to the directory the search started from, resumed from another:
        # the file the search read (its sha256 is checked below); the trials' dataset knob stays as it was
        dataset = source
    try:
        try:
            corpus = load_corpus(dataset, tokenizer, plan.data_dir, fetch=fetch)
        except CorpusError as exc:
            where = space.sources.get("fixed.dataset")  # the space file's line, or the --set, that named the corpus
            if where is None or isinstance(exc, NotFetched):
                raise
            raise CorpusError(
                f"{where}: {exc}" if where.startswith("--") else f"{where}: fixed.dataset: {exc}"
            ) from None
        # The loaders' needs grow with seq_len and with batch_size, each alone: the largest of each is the test.
        seq_len, batch_size = (int(max(space.possible_values(key))) for key in ("seq_len", "batch_size"))
        whole_batches = any(space.possible_values("compile"))  # true or 'auto'
        for train_loader in sorted(set(space.possible_values("train_loader"))):
            for valid_loader in sorted(set(space.possible_values("valid_loader"))):
                check_fits(
                    corpus,
                    seq_len,
                    batch_size,
                    train_loader=train_loader,
                    valid_loader=valid_loader,
                    whole_batches=whole_batches,
                )
    except CorpusError as exc:
        if not fetch:
            raise
        raise SearchError(str(exc)) from None
    samples = max(space.possible_values("sample_tokens")) > 0
    for prompt in space.possible_values("prompt"):
        try:
            tokens = corpus.vocabulary.encode(get_tokenizer(tokenizer)(prompt), f"the corpus {corpus.source}")
        except UnknownTokenError as exc:
            raise SearchError(
                f"prompt {prompt!r} (the greedy sample's start): {exc}; give one this corpus can "
                f"encode, e.g. --set prompt=..."
            ) from None
        if samples and not tokens:
            raise SearchError(
                f"prompt must give at least one {tokenizer} token when sample_tokens > 0 (the "
                f"greedy sample continues it), but got {prompt!r}; give one, e.g. --set prompt=..., or "
                "--set sample_tokens=0"
            )
    started_with = plan.manifest.corpus
    if plan.mode is not Mode.NEW and started_with.get("sha256") and started_with["sha256"] != corpus.sha256:
        raise SearchError(
            f"{plan.mode.flag}: the corpus {corpus.source} (sha256 {corpus.sha256[:12]}) is not the one "
            f"search {plan.name!r} started with ({started_with.get('source')}, sha256 {started_with['sha256'][:12]}); "
            "give that corpus with --data"
        )
    return corpus


def describe_corpus(plan: Plan) -> str:
    """The dry run's corpus line: the corpus checked as the search will check it, without downloading it."""
    try:
        corpus = load_plan_corpus(plan, fetch=False)
    except NotFetched as exc:
        return f"corpus: {exc.path} is not here yet; the search downloads it from {exc.url}"
    except CorpusError as exc:
        raise SearchError(str(exc)) from None
    return (
        f"corpus: {corpus.source} ({len(corpus.train):,} train / {len(corpus.valid):,} valid {corpus.tokenizer} "
        f"tokens, vocabulary {corpus.vocab_size}, sha256 {corpus.sha256[:12]}), checked against the space"
    )
