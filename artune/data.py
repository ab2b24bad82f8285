"""The corpus: download (checksum, cache), read, tokenize, split 90/10 and encode, once.

Token ids are numpy arrays in the most compact integer dtype that holds the vocabulary, so a
:class:`Corpus` pickles small (it is shipped to every Ray worker once, and Ray hands numpy arrays
to workers without a copy). No torch here: the search driver encodes the corpus and never needs
torch, whose import would delay the search's start (see docs/benchmarks.md, 'Search overhead'). The trainer
turns the arrays into tensors; batches are cut in :mod:`artune.batches`.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from artune.errors import CorpusError, NotFetched  # noqa: F401  (re-exported)

from .tokenizers import Vocabulary, get_tokenizer

TINY_SHAKESPEARE = "tiny_shakespeare"
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_FILE = "tiny_shakespeare.txt"

TRAIN_FRACTION = 0.9  # of the characters, as in the origin


# --- finding the file


def default_data_dir() -> Path:
    """``$ARTUNE_DATA_DIR``, else ``$XDG_CACHE_HOME/artune``, else ``~/.cache/artune``."""
    explicit = os.environ.get("ARTUNE_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "artune"


def download(url: str, dest: Path, sha256: str, timeout: float = 60) -> Path:
    """Fetch ``url`` into ``dest`` if its SHA-256 matches; never leaves a partial file behind.

    Streams into a temporary file beside ``dest`` and renames it into place only once verified,
    so a concurrent reader (another worker) sees either no file or the whole file.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise CorpusError(f"cannot write the dataset cache directory {dest.parent}: {e.strerror or e}") from e
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 16):
                    digest.update(chunk)
                    out.write(chunk)
        got = digest.hexdigest()
        if got != sha256:
            raise CorpusError(
                f"download of {url} failed its checksum: expected sha256 {sha256}, got {got}; "
                f"nothing was written to {dest}"
            )
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        raise CorpusError(f"cannot download {url}: HTTP {e.code} {e.reason}; place the file at {dest} by hand") from e
    except urllib.error.URLError as e:
        raise CorpusError(f"cannot download {url}: {e.reason}; place the file at {dest} by hand") from e
    except OSError as e:  # timeouts, resets, a full disk
        raise CorpusError(f"cannot download {url} to {dest}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def resolve_dataset(
    dataset: str,
    data_dir: Union[str, Path, None] = None,
    *,
    url: str = TINY_SHAKESPEARE_URL,
    sha256: str = TINY_SHAKESPEARE_SHA256,
    fetch: bool = True,
) -> Path:
    """The path of the text file that ``dataset`` names, downloading Tiny Shakespeare when absent.

    ``'tiny_shakespeare'`` is ``<data_dir>/tiny_shakespeare.txt`` (``data_dir`` defaults to
    :func:`default_data_dir`, and may itself name the text file; an explicit ``data_dir`` must
    exist). A cached copy is trusted without re-hashing, unless it is empty, when it is fetched again. Any other
    value is a path to a text file, relative to the working directory. ``url`` and ``sha256`` say where Tiny Shakespeare
    comes from; ``fetch=False`` raises :class:`NotFetched` instead of downloading.
    """
    if dataset == TINY_SHAKESPEARE:
        if data_dir is not None and not Path(data_dir).expanduser().exists():
            # an explicit path that is not there is a typo, not a cache directory to create
            raise CorpusError(
                f"data path (--data) not found: {Path(data_dir).expanduser().absolute()}; give a text file or the "
                f"directory holding {TINY_SHAKESPEARE_FILE}"
            )
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        if root.is_file():
            path = root  # the user's own file: read as it is, never downloaded over
        elif root.exists() and not root.is_dir():  # /dev/null, a socket: it was taken for a directory to fill
            raise CorpusError(
                f"data path (--data) {root.absolute()} is neither a text file nor a directory; give a text file or "
                f"the directory holding {TINY_SHAKESPEARE_FILE}"
            )
        else:
            path = root / TINY_SHAKESPEARE_FILE
            if not path.is_file() or path.stat().st_size == 0:
                if not fetch:
                    raise NotFetched(url, path)
                try:
                    download(url, path, sha256)
                except CorpusError as error:  # offline, say: the user may hold a copy
                    raise CorpusError(
                        f"{error}; or use a copy you have: --data PATH (the file, or the directory holding "
                        f"{TINY_SHAKESPEARE_FILE}), or ARTUNE_DATA_DIR=DIRECTORY"
                    ) from error
    else:
        path = Path(dataset).expanduser()
    path = path.absolute()
    if not path.exists():
        raise CorpusError(f"dataset file not found: {path}; give 'tiny_shakespeare' or the path of a UTF-8 text file")
    if path.is_dir():
        raise CorpusError(f"dataset must be a text file, but {path} is a directory")
    if not os.access(path, os.R_OK):
        raise CorpusError(f"dataset file is not readable: {path}; check its permissions")
    return path


# --- reading and encoding


def _read(path: Path) -> tuple[bytes, str]:
    """The file's bytes and their strict UTF-8 decoding."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read dataset file {path}: {e.strerror or e}") from e
    if not data:
        raise CorpusError(f"dataset file is empty: {path}; a corpus needs text to train on")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"dataset file {path} is not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"({e.reason}); "
            "re-encode it as UTF-8 (e.g. iconv -t utf-8)"
        ) from e
    return data, text


def read_text(path: Union[str, Path]) -> str:
    """The file decoded as strict UTF-8; an empty or undecodable file is a CorpusError."""
    return _read(Path(path))[1]


def compact_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer dtype that holds every id of the vocabulary (one torch has too)."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


@dataclass(frozen=True, eq=False)
class Corpus:
    """A tokenized corpus split 90/10 into train and valid 1-D token-id arrays (compact dtype)."""

    train: np.ndarray  # (N_train,)
    valid: np.ndarray  # (N_valid,)
    vocabulary: Vocabulary
    tokenizer: str
    source: str  # the path the text was read from
    sha256: str  # of the file's bytes, to record which text a result was trained on

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)


def load_corpus(dataset: str, tokenizer: str, data_dir: Union[str, Path, None] = None, *, fetch: bool = True) -> Corpus:
    """Resolve, read, split (by characters, as the origin) and encode a corpus once (``fetch``: see resolve_dataset)."""
    path = resolve_dataset(dataset, data_dir, fetch=fetch)
    data, text = _read(path)
    tokenize = get_tokenizer(tokenizer)
    cut = int(len(text) * TRAIN_FRACTION)
    train_tokens, valid_tokens = tokenize(text[:cut]), tokenize(text[cut:])
    vocabulary = Vocabulary.build(train_tokens, valid_tokens)
    if len(vocabulary) < 2:
        raise CorpusError(
            f"dataset file {path} has {len(vocabulary)} distinct {tokenizer} token(s); "
            "a language model needs at least 2 — use a richer text"
        )
    dtype = compact_dtype(len(vocabulary))
    return Corpus(
        train=np.array(vocabulary.encode(train_tokens), dtype=dtype),
        valid=np.array(vocabulary.encode(valid_tokens), dtype=dtype),
        vocabulary=vocabulary,
        tokenizer=tokenizer,
        source=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
    )


# --- counting windows and batches (the loaders are in artune.batches)


def num_windows(n_tokens: int, seq_len: int, offset: int = 0) -> int:
    # Each window needs one token beyond its end for the target.
    return max(0, (n_tokens - 1 - offset) // seq_len)


def num_offsets(n_tokens: int, seq_len: int) -> int:
    """How many first-window offsets the shuffled loader draws from: ``seq_len``, or fewer where at most
    one window fits."""
    return max(1, min(seq_len, n_tokens - seq_len))


def num_shuffled_batches(n_tokens: int, batch_size: int, seq_len: int, whole_only: bool = False) -> int:
    """An upper bound on the batches of one :func:`artune.batches.shuffled_batches` epoch (exact at offset 0);
    ``whole_only``: on its batches of all ``batch_size`` rows."""
    windows = num_windows(n_tokens, seq_len)
    return windows // batch_size if whole_only else math.ceil(windows / batch_size)


def num_sequential_batches(n_tokens: int, batch_size: int, seq_len: int, whole_only: bool = False) -> int:
    """The exact number of batches :func:`artune.batches.sequential_batches` yields; ``whole_only``: of those a
    full ``seq_len`` long (all but a shorter last chunk)."""
    targets = max(0, n_tokens // batch_size - 1)
    return targets // seq_len if whole_only else math.ceil(targets / seq_len)


def check_fits(
    corpus: Corpus,
    seq_len: int,
    batch_size: int,
    *,
    train_loader: str = "shuffled",
    valid_loader: str = "sequential",
    whole_batches: bool = False,
) -> None:
    """Raise CorpusError unless each split yields at least one batch under its loader.

    Every loader needs ``seq_len + 1`` tokens (a window and its shifted target); the sequential
    loader also needs each of its ``batch_size`` streams to hold at least two tokens. With
    ``whole_batches`` (``compile``, which skips a partial last batch) the train split must hold a
    whole batch.
    """
    for split, tokens, loader in (("train", corpus.train, train_loader), ("valid", corpus.valid, valid_loader)):
        n = len(tokens)
        if n < seq_len + 1:
            raise CorpusError(
                f"the {split} split of {corpus.source} has {n} {corpus.tokenizer} tokens, fewer than "
                f"seq_len + 1 = {seq_len + 1}; use a smaller seq_len or a bigger corpus"
            )
        if loader == "sequential" and n // batch_size < 2:
            raise CorpusError(
                f"the {split} split of {corpus.source} has {n} {corpus.tokenizer} tokens, too few for "
                f"{batch_size} sequential streams (needs at least 2 * batch_size = {2 * batch_size}); "
                "use a smaller batch_size or a bigger corpus"
            )
    if not whole_batches:
        return
    n = len(corpus.train)
    if train_loader == "sequential":
        whole = num_sequential_batches(n, batch_size, seq_len, whole_only=True)
    else:  # at the largest offset the loader can draw, the fewest windows
        whole = num_windows(n, seq_len, offset=num_offsets(n, seq_len) - 1) // batch_size
    if whole == 0:
        raise CorpusError(
            f"compile (true or 'auto') trains on whole batches only, and the train split of {corpus.source} "
            f"({len(corpus.train)} {corpus.tokenizer} tokens) holds no whole batch of batch_size "
            f"{batch_size} x seq_len {seq_len} under the {train_loader} loader; "
            "use a smaller batch_size or seq_len, or compile: false"
        )
