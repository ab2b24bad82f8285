"""Corpus loading (download, checksum, cache), the train/valid split, and batches.

One batch layout everywhere: batch-first. ``x`` and ``y`` are int64 ``(B, T)`` and ``y`` is ``x``
shifted one token ahead, so ``y[b, t]`` is the token that follows ``x[b, t]`` in the corpus.

Token tensors are kept in the most compact integer dtype that holds the vocabulary, so a
:class:`Corpus` pickles small (it is shipped to every Ray worker once); batches are cast to int64
only when they are cut.
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
from typing import Iterator, Union

import torch

from .tokenizers import Vocabulary, get_tokenizer

TINY_SHAKESPEARE = "tiny_shakespeare"
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_FILE = "tiny_shakespeare.txt"

TRAIN_FRACTION = 0.9  # of the characters, as in the origin

Batch = tuple[torch.Tensor, torch.Tensor]


class CorpusError(ValueError):
    """A corpus cannot be found, fetched, read or used. The message names the file, rule and value."""


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
) -> Path:
    """The path of the text file that ``dataset`` names, downloading Tiny Shakespeare when absent.

    ``'tiny_shakespeare'`` is ``<data_dir>/tiny_shakespeare.txt`` (``data_dir`` defaults to
    :func:`default_data_dir`, and may itself name the text file; an explicit ``data_dir`` must
    exist). A cached copy is trusted without re-hashing, unless it is empty, when it is fetched again. Any other value is a path to a text
    file, relative to the working directory. ``url`` and ``sha256`` say where Tiny Shakespeare
    comes from.
    """
    if dataset == TINY_SHAKESPEARE:
        if data_dir is not None and not Path(data_dir).expanduser().exists():
            # an explicit path that is not there is a typo, not a cache directory to create
            raise CorpusError(
                f"data path not found: {Path(data_dir).expanduser().absolute()}; give a text file or the directory "
                f"holding {TINY_SHAKESPEARE_FILE}"
            )
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        if root.is_file():
            path = root  # the user's own file: read as it is, never downloaded over
        else:
            path = root / TINY_SHAKESPEARE_FILE
            if not path.is_file() or path.stat().st_size == 0:
                download(url, path, sha256)
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
            f"dataset file {path} is not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} ({e.reason}); "
            "re-encode it as UTF-8 (e.g. iconv -t utf-8)"
        ) from e
    return data, text


def read_text(path: Union[str, Path]) -> str:
    """The file decoded as strict UTF-8; an empty or undecodable file is a CorpusError."""
    return _read(Path(path))[1]


def compact_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype that holds every id of the vocabulary."""
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 32767:
        return torch.int16
    return torch.int32


@dataclass(frozen=True, eq=False)
class Corpus:
    """A tokenized corpus split 90/10 into train and valid 1-D token-id tensors (compact dtype)."""

    train: torch.Tensor  # (N_train,)
    valid: torch.Tensor  # (N_valid,)
    vocabulary: Vocabulary
    tokenizer: str
    source: str  # the path the text was read from
    sha256: str  # of the file's bytes, to record which text a result was trained on

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)


def load_corpus(dataset: str, tokenizer: str, data_dir: Union[str, Path, None] = None) -> Corpus:
    """Resolve, read, split (by characters, as the origin) and encode a corpus once."""
    path = resolve_dataset(dataset, data_dir)
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
        train=torch.tensor(vocabulary.encode(train_tokens), dtype=dtype),
        valid=torch.tensor(vocabulary.encode(valid_tokens), dtype=dtype),
        vocabulary=vocabulary,
        tokenizer=tokenizer,
        source=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def check_fits(
    corpus: Corpus,
    seq_len: int,
    batch_size: int,
    *,
    train_loader: str = "shuffled",
    valid_loader: str = "sequential",
) -> None:
    """Raise CorpusError unless each split yields at least one batch under its loader.

    Every loader needs ``seq_len + 1`` tokens (a window and its shifted target); the sequential
    loader also needs each of its ``batch_size`` streams to hold at least two tokens.
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


# --- batches


def _windows(tokens: torch.Tensor, offset: int, order: torch.Tensor, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Yield the windows ``tokens[offset + i * seq_len :][: seq_len + 1]`` for ``i`` in ``order``, ``batch_size`` at a time."""
    # A strided view (n, T + 1) of every window, no copy; each batch is one row gather, which is
    # several times cheaper than gathering B * (T + 1) element indices. index_select, not
    # windows[rows]: advanced indexing of this overlapping view is 3x slower, and it enters a
    # parallel region that stalls for a scheduler time slice (~8 ms) whenever the cores are busy.
    windows = tokens[offset:].unfold(0, seq_len + 1, seq_len)
    order = order.to(tokens.device)  # one copy per epoch; index_select wants its index beside the data (CUDA)
    for i in range(0, len(order), batch_size):
        chunk = windows.index_select(0, order[i : i + batch_size]).long()  # (B, T + 1)
        yield chunk[:, :-1], chunk[:, 1:]


def _num_windows(n_tokens: int, seq_len: int, offset: int = 0) -> int:
    # Each window needs one token beyond its end for the target.
    return max(0, (n_tokens - 1 - offset) // seq_len)


def shuffled_batches(
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    with_replacement: bool,
) -> Iterator[Batch]:
    """One epoch of randomly ordered, non-overlapping windows (the origin's shuffled loader).

    A random offset in ``[0, seq_len)`` is drawn once per call, so window boundaries move from
    epoch to epoch; the ``n`` windows after it are visited as a permutation (each at most once)
    or, ``with_replacement``, as ``n`` uniform draws. All draws from ``generator`` happen at the
    call, not lazily on iteration. The offset is capped so that at least one window fits.
    """
    n_tokens = len(tokens)
    high = max(1, min(seq_len, n_tokens - seq_len))  # == seq_len whenever n_tokens >= 2 * seq_len
    offset = int(torch.randint(high, (1,), generator=generator))
    n = _num_windows(n_tokens, seq_len, offset)
    if with_replacement:
        order = torch.randint(n, (n,), generator=generator) if n else torch.empty(0, dtype=torch.long)
    else:
        order = torch.randperm(n, generator=generator)
    return _windows(tokens, offset, order, batch_size, seq_len)


def num_shuffled_batches(n_tokens: int, batch_size: int, seq_len: int, whole_only: bool = False) -> int:
    """An upper bound on the batches of one :func:`shuffled_batches` epoch (exact at offset 0);
    ``whole_only``: on its batches of all ``batch_size`` rows."""
    windows = _num_windows(n_tokens, seq_len)
    return windows // batch_size if whole_only else math.ceil(windows / batch_size)


def sequential_batches(tokens: torch.Tensor, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """The origin's SequentialDataLoader, batch-first: ``batch_size`` contiguous streams read in step.

    Row ``b`` of consecutive batches continues where it left off, so ``x[b]`` of one batch follows
    ``x[b]`` of the previous one in the text. The tail that does not fill the streams is dropped;
    the last chunk may be shorter than ``seq_len``.
    """
    length = len(tokens) // batch_size
    streams = tokens[: length * batch_size].reshape(batch_size, length)  # (B, L)
    for i in range(0, length - 1, seq_len):
        t = min(seq_len, length - 1 - i)
        yield streams[:, i : i + t].long(), streams[:, i + 1 : i + 1 + t].long()


def num_sequential_batches(n_tokens: int, batch_size: int, seq_len: int, whole_only: bool = False) -> int:
    """The exact number of batches :func:`sequential_batches` yields; ``whole_only``: of those a
    full ``seq_len`` long (all but a shorter last chunk)."""
    targets = max(0, n_tokens // batch_size - 1)
    return targets // seq_len if whole_only else math.ceil(targets / seq_len)


def valid_batches(tokens: torch.Tensor, loader: str, batch_size: int, seq_len: int, seed: int) -> Iterator[Batch]:
    """A deterministic full pass: the same batches on every call, so validation losses compare."""
    if loader == "sequential":
        return sequential_batches(tokens, batch_size, seq_len)
    if loader == "shuffled":
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(_num_windows(len(tokens), seq_len), generator=generator)
        return _windows(tokens, 0, order, batch_size, seq_len)
    raise ValueError(f"valid_loader must be one of shuffled, sequential, but got {loader!r}")


def train_batches(
    tokens: torch.Tensor,
    loader: str,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    with_replacement: bool,
) -> Iterator[Batch]:
    """One training epoch under the named loader."""
    if loader == "shuffled":
        return shuffled_batches(tokens, batch_size, seq_len, generator, with_replacement)
    if loader == "sequential":
        return sequential_batches(tokens, batch_size, seq_len)
    raise ValueError(f"train_loader must be one of shuffled, sequential, but got {loader!r}")
