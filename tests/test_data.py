import hashlib
import http.server
import pickle
import socket
import threading

import numpy as np
import pytest
import torch

from artune.batches import sequential_batches, shuffled_batches, train_batches, valid_batches
from artune.data import (
    TINY_SHAKESPEARE_FILE,
    TINY_SHAKESPEARE_SHA256,
    Corpus,
    CorpusError,
    check_fits,
    compact_dtype,
    default_data_dir,
    download,
    load_corpus,
    num_sequential_batches,
    num_shuffled_batches,
    read_text,
    resolve_dataset,
)

# --- a real HTTP server on 127.0.0.1


class _Server:
    """Serves ``files`` (URL path -> bytes) over HTTP in a thread and counts the requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    body = b"The quick brown fox jumps over the lazy dog.\n" * 50
    s = _Server({"/input.txt": body})
    s.body, s.sha = body, hashlib.sha256(body).hexdigest()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_caches_and_second_call_does_not_fetch(server, tmp_path):
    path = resolve_dataset("tiny_shakespeare", tmp_path, url=server.url("/input.txt"), sha256=server.sha)
    assert path == tmp_path / TINY_SHAKESPEARE_FILE
    assert path.read_bytes() == server.body
    assert server.requests == ["/input.txt"]
    assert resolve_dataset("tiny_shakespeare", tmp_path, url=server.url("/input.txt"), sha256=server.sha) == path
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_download_refuses_wrong_checksum_and_leaves_nothing(server, tmp_path):
    with pytest.raises(CorpusError) as info:
        resolve_dataset("tiny_shakespeare", tmp_path, url=server.url("/input.txt"), sha256="0" * 64)
    message = str(info.value)
    assert server.url("/input.txt") in message and "0" * 64 in message and server.sha in message
    assert list(tmp_path.iterdir()) == []


def test_download_404_leaves_nothing(server, tmp_path):
    with pytest.raises(CorpusError, match="HTTP 404") as info:
        download(server.url("/missing.txt"), tmp_path / "x.txt", server.sha)
    assert server.url("/missing.txt") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_connection_refused_leaves_nothing(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/input.txt"
    with pytest.raises(CorpusError, match="cannot download") as info:
        resolve_dataset("tiny_shakespeare", tmp_path, url=url, sha256=TINY_SHAKESPEARE_SHA256)
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_names_the_ways_to_give_a_copy(tmp_path, monkeypatch):
    """Offline, the error says where the file goes and how to point artune at a copy: --data or ARTUNE_DATA_DIR."""
    monkeypatch.setenv("ARTUNE_DATA_DIR", str(tmp_path))  # an empty cache
    url = f"http://127.0.0.1:{_closed_port()}/input.txt"
    with pytest.raises(CorpusError) as info:
        resolve_dataset("tiny_shakespeare", url=url, sha256=TINY_SHAKESPEARE_SHA256)
    message = str(info.value)
    assert "\n" not in message and url in message and str(tmp_path / TINY_SHAKESPEARE_FILE) in message
    assert "--data PATH" in message and "ARTUNE_DATA_DIR=DIRECTORY" in message, message
    assert list(tmp_path.iterdir()) == []


def test_empty_cached_file_is_fetched_again(server, tmp_path):
    (tmp_path / TINY_SHAKESPEARE_FILE).write_bytes(b"")
    path = resolve_dataset("tiny_shakespeare", tmp_path, url=server.url("/input.txt"), sha256=server.sha)
    assert path.read_bytes() == server.body
    assert len(server.requests) == 1


def test_artune_data_dir_is_honoured(server, tmp_path, monkeypatch, shakespeare_path):
    monkeypatch.setenv("ARTUNE_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    cached = tmp_path / TINY_SHAKESPEARE_FILE
    cached.write_bytes(shakespeare_path.read_bytes())
    assert resolve_dataset("tiny_shakespeare", url=server.url("/input.txt"), sha256=server.sha) == cached
    assert server.requests == []


def test_default_data_dir_falls_back_to_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("ARTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "artune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "artune"


def test_data_dir_may_name_the_file_itself(shakespeare_path):
    assert resolve_dataset("tiny_shakespeare", shakespeare_path) == shakespeare_path


def test_a_data_path_that_is_neither_file_nor_directory_is_refused(tmp_path):
    """/dev/null was taken for a directory: a search's dry run promised to download into /dev/null/, and train
    said it could not write a cache directory there."""
    with pytest.raises(CorpusError, match="data path .*/dev/null is neither a text file nor a directory"):
        resolve_dataset("tiny_shakespeare", "/dev/null")


def test_relative_path_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "tiny.txt").write_text("abcabc")
    monkeypatch.chdir(tmp_path)
    assert resolve_dataset("tiny.txt") == tmp_path / "tiny.txt"


# --- loading


@pytest.fixture(scope="module")
def shakespeare(shakespeare_path) -> Corpus:
    return load_corpus("tiny_shakespeare", "character", data_dir=shakespeare_path.parent)


def test_shared_tiny_shakespeare_loads(shakespeare, shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    assert shakespeare.vocab_size == 65
    assert shakespeare.sha256 == TINY_SHAKESPEARE_SHA256
    assert shakespeare.source == str(shakespeare_path)
    assert len(shakespeare.train) == cut and len(shakespeare.valid) == len(text) - cut
    assert shakespeare.train.dtype == np.uint8 and shakespeare.train.ndim == 1
    assert shakespeare.vocabulary.decode(shakespeare.train[:14].tolist()) == "First Citizen:"
    assert shakespeare.vocabulary.decode(shakespeare.valid.tolist()) == text[cut:]


def test_corpus_pickles_small(shakespeare):
    data = pickle.dumps(shakespeare)
    assert len(data) < 1.2e6  # ~1 byte per character
    restored = pickle.loads(data)
    assert np.array_equal(restored.train, shakespeare.train) and restored.vocabulary == shakespeare.vocabulary


def test_basic_english_corpus_loads(shakespeare_path):
    corpus = load_corpus(str(shakespeare_path), "basic_english")
    assert corpus.tokenizer == "basic_english"
    assert 10_000 < corpus.vocab_size <= 32767 and corpus.train.dtype == np.int16
    assert corpus.vocabulary.decode(corpus.train[:3].tolist(), separator=" ") == "first citizen before"
    assert len(corpus.train) > 8 * len(corpus.valid)


def test_compact_dtype():
    assert compact_dtype(256) == np.uint8
    assert compact_dtype(257) == np.int16
    assert compact_dtype(32767) == np.int16
    assert compact_dtype(32768) == np.int32
    assert torch.tensor(np.zeros(2, compact_dtype(257))).dtype == torch.int16  # a dtype torch has too


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="dataset file not found: .*nope.txt"):
        load_corpus(str(tmp_path / "nope.txt"), "character")


def test_directory(tmp_path):
    with pytest.raises(CorpusError, match="is a directory"):
        load_corpus(str(tmp_path), "character")


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty.*empty.txt"):
        load_corpus(str(tmp_path / "empty.txt"), "character")


def test_one_distinct_token(tmp_path):
    (tmp_path / "a.txt").write_text("aaaaaaaaaa")
    with pytest.raises(CorpusError, match="1 distinct character token.*at least 2"):
        load_corpus(str(tmp_path / "a.txt"), "character")


def test_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(CorpusError) as info:
        read_text(path)
    message = str(info.value)
    assert str(path) in message and "byte offset 3" in message and "0xe9" in message
    with pytest.raises(CorpusError, match="byte offset 3"):
        load_corpus(str(path), "character")


def test_corpus_too_small_for_seq_len(tmp_path):
    (tmp_path / "small.txt").write_text("abcdefghij" * 10)  # 90 train, 10 valid characters
    corpus = load_corpus(str(tmp_path / "small.txt"), "character")
    check_fits(corpus, seq_len=9, batch_size=1)
    with pytest.raises(CorpusError, match=r"valid split .* 10 character tokens.*seq_len \+ 1 = 11.*smaller seq_len"):
        check_fits(corpus, seq_len=10, batch_size=1)
    with pytest.raises(CorpusError, match=r"train split .* 90 .*seq_len \+ 1 = 91"):
        check_fits(corpus, seq_len=90, batch_size=1)
    with pytest.raises(CorpusError, match=r"valid split .*2 \* batch_size = 12.*smaller batch_size"):
        check_fits(corpus, seq_len=2, batch_size=6)
    check_fits(corpus, seq_len=2, batch_size=6, valid_loader="shuffled")


def test_compile_needs_a_whole_batch_at_every_offset_the_shuffled_loader_draws(tmp_path):
    """153 train tokens in windows of 16: 9 windows at offset 0, 8 at offset 15. Batches of 9 are whole at
    the first offsets only, so compiled training (whole batches only) would train nothing in some epochs."""
    import torch

    from artune.batches import shuffled_batches

    (tmp_path / "c.txt").write_text("abcdefghij" * 17)  # 170 characters: 153 train, 17 valid
    corpus = load_corpus(str(tmp_path / "c.txt"), "character")
    tokens = torch.tensor(corpus.train)
    sizes = {
        len(x)
        for seed in range(20)
        for x, _ in shuffled_batches(tokens, 9, 16, torch.Generator().manual_seed(seed), False)
    }
    assert len(corpus.train) == 153 and sizes == {8, 9}  # some epochs hold no whole batch of 9
    check_fits(corpus, seq_len=16, batch_size=8, valid_loader="shuffled", whole_batches=True)
    with pytest.raises(CorpusError, match=r"compile \(true or 'auto'\) trains on whole batches only"):
        check_fits(corpus, seq_len=16, batch_size=9, valid_loader="shuffled", whole_batches=True)
    check_fits(corpus, seq_len=16, batch_size=9, valid_loader="shuffled")  # eager training takes the partial batch


# --- batches
# --- batches


def _tokens(n: int) -> torch.Tensor:
    """Tokens whose value is their position (mod 256), so a window reveals where it was cut."""
    return (torch.arange(n) % 256).to(torch.uint8)


def _starts(batches) -> list[int]:
    return [int(row[0]) for x, _ in batches for row in x]


def test_shuffled_without_replacement_visits_every_window_once():
    tokens, seq_len = torch.arange(1000, dtype=torch.int16), 7
    for seed in range(20):
        batches = list(shuffled_batches(tokens, 8, seq_len, torch.Generator().manual_seed(seed), False))
        starts = _starts(batches)
        offset = min(starts) % seq_len
        n = (len(tokens) - 1 - offset) // seq_len
        assert sorted(starts) == [offset + i * seq_len for i in range(n)]
        assert all(len(x) == 8 for x, _ in batches[:-1]) and 0 < len(batches[-1][0]) <= 8
        assert len(batches) <= num_shuffled_batches(len(tokens), 8, seq_len)


def test_shuffled_offsets_vary_across_epochs():
    tokens, generator = torch.arange(1000, dtype=torch.int16), torch.Generator().manual_seed(0)
    offsets = {min(_starts(shuffled_batches(tokens, 8, 7, generator, False))) for _ in range(200)}
    assert offsets == set(range(7))


def test_shuffled_with_replacement_repeats_windows():
    tokens, seq_len = torch.arange(200, dtype=torch.int16), 4
    batches = list(shuffled_batches(tokens, 5, seq_len, torch.Generator().manual_seed(0), True))
    starts = _starts(batches)
    offset = starts[0] % seq_len
    assert len(starts) == (len(tokens) - 1 - offset) // seq_len
    assert all(s % seq_len == offset for s in starts)
    assert len(set(starts)) < len(starts)  # ~49 draws from ~49 windows: repeats are all but certain


@pytest.mark.parametrize("with_replacement", [False, True])
def test_y_is_x_shifted_by_one(shakespeare, with_replacement):
    tokens, generator = torch.tensor(shakespeare.valid), torch.Generator().manual_seed(1)
    x, y = next(shuffled_batches(tokens, 4, 32, generator, with_replacement))
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    text = shakespeare.vocabulary.decode(tokens.tolist())
    for row_x, row_y in zip(x, y):
        assert torch.equal(row_y[:-1], row_x[1:])
        window = torch.cat([row_x, row_y[-1:]])  # x and its target: one unbroken stretch of the split
        assert shakespeare.vocabulary.decode(window.tolist()) in text


def test_same_seed_same_batches_different_seed_different():
    tokens = _tokens(5000)

    def epoch(seed):
        return list(shuffled_batches(tokens, 16, 20, torch.Generator().manual_seed(seed), False))

    first, again, other = epoch(3), epoch(3), epoch(4)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])


def test_shuffled_fits_a_split_of_just_seq_len_plus_one():
    tokens = _tokens(11)
    for seed in range(10):
        batches = list(shuffled_batches(tokens, 4, 10, torch.Generator().manual_seed(seed), False))
        assert len(batches) == 1 and torch.equal(batches[0][0][0], tokens[:10].long())


def test_sequential_streams_are_contiguous():
    tokens, batch_size, seq_len = torch.arange(103, dtype=torch.int16), 4, 6
    batches = list(sequential_batches(tokens, batch_size, seq_len))
    length = 103 // batch_size  # 25 tokens per stream
    assert len(batches) == num_sequential_batches(103, batch_size, seq_len) == 4
    rows_x = torch.cat([x for x, _ in batches], dim=1)
    rows_y = torch.cat([y for _, y in batches], dim=1)
    for b in range(batch_size):
        # Concatenated across batches, each row is one unbroken stretch of the corpus.
        assert rows_x[b].tolist() == list(range(b * length, (b + 1) * length - 1))
        assert rows_y[b].tolist() == list(range(b * length + 1, (b + 1) * length))
    assert [x.shape[1] for x, _ in batches] == [6, 6, 6, 6]
    assert batches[0][0].dtype == torch.int64


def test_sequential_last_chunk_may_be_shorter():
    batches = list(sequential_batches(torch.arange(40, dtype=torch.int16), 2, 8))  # streams of 20
    assert [x.shape for x, _ in batches] == [(2, 8), (2, 8), (2, 3)]
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)


@pytest.mark.parametrize("whole_only", [False, True])
def test_a_sequential_pass_from_any_start_wraps_around_and_visits_every_batch_once(whole_only):
    tokens = torch.arange(40, dtype=torch.int16)  # streams of 20: chunks of 8, 8 and a shorter 3
    full = list(sequential_batches(tokens, 2, 8, whole_only=whole_only))
    assert len(full) == num_sequential_batches(40, 2, 8, whole_only=whole_only) == (2 if whole_only else 3)
    for start in range(7):
        batches = list(sequential_batches(tokens, 2, 8, start=start, whole_only=whole_only))
        expected = full[start % len(full) :] + full[: start % len(full)]
        assert len(batches) == len(full) and all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, expected)
        )


@pytest.mark.parametrize("loader", ["sequential", "shuffled"])
def test_valid_batches_are_identical_across_calls_and_cover_the_split(loader):
    tokens, seq_len = torch.arange(500, dtype=torch.int16), 9
    first = list(valid_batches(tokens, loader, 4, seq_len, seed=7))
    again = list(valid_batches(tokens, loader, 4, seq_len, seed=7))
    assert len(first) == len(again) > 0
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    covered = sorted(set(torch.cat([torch.cat([x, y], dim=1).flatten() for x, y in first]).tolist()))
    if loader == "shuffled":
        assert covered == list(range((499 // seq_len) * seq_len + 1))
    else:
        assert covered == list(range(500))


def test_valid_shuffled_order_depends_on_the_seed():
    tokens = torch.arange(500, dtype=torch.int16)
    a = next(valid_batches(tokens, "shuffled", 4, 9, seed=0))[0]
    b = next(valid_batches(tokens, "shuffled", 4, 9, seed=1))[0]
    assert not torch.equal(a, b)


def test_train_batches_dispatch():
    tokens = _tokens(300)
    sequential = list(train_batches(tokens, "sequential", 2, 10, torch.Generator(), False))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(sequential, sequential_batches(tokens, 2, 10)))
    shuffled = list(train_batches(tokens, "shuffled", 2, 10, torch.Generator().manual_seed(5), True))
    expected = list(shuffled_batches(tokens, 2, 10, torch.Generator().manual_seed(5), True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shuffled, expected))
    with pytest.raises(ValueError, match="'random'"):
        train_batches(tokens, "random", 2, 10, torch.Generator(), False)


def test_a_full_shakespeare_epoch_covers_the_train_split(shakespeare):
    generator = torch.Generator().manual_seed(0)
    n = sum(len(x) for x, _ in shuffled_batches(torch.tensor(shakespeare.train), 64, 256, generator, False))
    assert (len(shakespeare.train) - 1 - 255) // 256 <= n <= (len(shakespeare.train) - 1) // 256
