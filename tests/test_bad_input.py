"""Bad input through the real CLI: one line on stderr, exit code 2, no traceback, nothing written.

tests/test_spaces.py and tests/test_config.py check each rule at the loader; here the point is the
command's contract for every kind of bad input a user can give it: the space file, ``--set``, the
corpus, the results directory and name, the cluster. Most cases start no Ray, so they run a few at
a time (one fixture runs them all; each test then checks its own case).
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests._searches import Search, snapshot, wait_for_ray_to_end
from tests.test_search import SMOKE, assert_one_error_line, cli

pytestmark = pytest.mark.usefixtures("ray_tmpdir")  # conftest: a RAY_TMPDIR of this module's

# A valid space to break one thing at a time: every case below differs from it in one place.
GOOD = """search:
  num_samples: 1
  epochs: 1
  scheduler: none
fixed:
  seq_len: 32
  batch_size: 8
  batches_per_epoch: 5
  n_layers: 1
  n_heads: 2
  device: cpu
params:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
"""

SPACES = {
    # name: (file text, fragments the one error line must hold; {path} is the file)
    "empty": ("", ["{path}:1", "the file is empty", "at least one of its sections search:, fixed:, params:"]),
    "only comments": ("# a sweep, to come\n", ["{path}:1", "the file is empty (or only comments)"]),
    # the space names its corpus, and the command gives --data too: one of them would be ignored
    "dataset_and_data": (
        GOOD.replace("  seq_len: 32\n", "  seq_len: 32\n  dataset: corpus.txt\n"),
        ["--data", "{path}:7: fixed.dataset (corpus.txt) both name the corpus", "leave --data out"],
    ),
    "not_a_mapping": ("- search\n- params\n", ["{path}:1", "top level must be a mapping"]),
    "yaml_syntax": (GOOD.replace("batch_size: 8", "batch_size: 8: 9"), ["{path}:7:", "YAML syntax"]),
    "duplicate_key": (
        GOOD.replace("  batch_size: 8\n", "  batch_size: 8\n  batch_size: 16\n"),
        ["{path}:8", "'batch_size'", "keys must be unique", "first at line 7"],
    ),
    "unknown_param": (GOOD.replace("  lr: {", "  lrr: {"), ["{path}:13", "'lrr'", "did you mean 'lr'"]),
    "low_above_high": (
        GOOD.replace("[1.0e-4, 1.0e-2]", "[1.0e-2, 1.0e-4]"),
        ["{path}:13", "params.lr", "low <= high must hold, but got low=0.01, high=0.0001"],
    ),
    "loguniform_low_0": (
        GOOD.replace("[1.0e-4, 1.0e-2]", "[0, 1.0e-2]"),
        ["{path}:13", "params.lr", "low > 0", "low=0"],
    ),
    "cuda_without_a_gpu": (
        GOOD.replace("device: cpu", "device: cuda"),
        ["{path}:11: fixed.device", "device 'cuda' needs a GPU for each trial", "resources.gpu is 0"],
    ),
    "empty_choice": (GOOD + "  d_model: {choice: []}\n", ["{path}:14", "params.d_model", "non-empty list"]),
    "int_step_0": (
        GOOD + "  d_model: {int: [32, 64], step: 0}\n",
        ["{path}:14", "params.d_model", "step >= 1 must hold, but got step=0"],
    ),
    "heads_do_not_divide": (
        GOOD + "  d_model: {choice: [33, 64]}\n",
        ["{path}:14", "params.d_model", "n_heads must divide d_model", "d_model=33, n_heads=2"],
    ),
    "wrong_type": (
        GOOD.replace("batch_size: 8", "batch_size: abc"),
        ["{path}:7", "fixed.batch_size", "must be an integer, but got 'abc'"],
    ),
    # the largest batch_size searched is checked against the corpus (~111k valid tokens, read as 60000 streams)
    "batch_size_too_big_for_the_corpus": (
        GOOD.replace("  batch_size: 8\n", "") + "  batch_size: {choice: [8, 60000]}\n",
        ["the valid split", "too few for 60000 sequential streams"],
    ),
    # compile skips a partial last batch: a train split (~1M tokens, 31k windows of 32) without one whole batch
    "compile_without_a_whole_batch": (
        GOOD.replace("  batch_size: 8\n", "  batch_size: 40000\n  compile: true\n  valid_loader: shuffled\n"),
        ["compile (true or 'auto') trains on whole batches only", "batch_size 40000"],
    ),
    "python_tag": (
        GOOD.replace("seq_len: 32", "seq_len: !!python/object/apply:os.system ['touch {marker}']"),
        ["{path}:6:", "python tags are refused", "!!python/object/apply:os.system"],
    ),
}

SETS = {
    # --set KEY=VALUE: fragments of the one error line
    "lr=-1": ["--set lr=-1", "lr > 0 must hold", "lr=-1"],
    "lr=nan": ["--set lr=nan", "lr > 0 must hold", "lr=nan"],
    "grad_norm_clip=0": ["--set grad_norm_clip=0", "grad_norm_clip > 0 must hold"],
    "batch_size=0": ["--set batch_size=0", "batch_size > 0 must hold"],
    "seq_len=0": ["--set seq_len=0", "seq_len > 0 must hold"],
    # fits the train split (~1M tokens) but not the valid split (~111k): the valid split is checked too
    "seq_len=150000": ["the valid split", "fewer than seq_len + 1 = 150001", "smaller seq_len"],
    "tokenizer=bpe": ["--set tokenizer=bpe", "tokenizer must be one of character, basic_english, but got 'bpe'"],
    "optimizer=sgd": ["--set optimizer=sgd", "optimizer must be one of adam, adamw, noam, muon, but got 'sgd'"],
    "device=tpu": ["--set device=tpu", "device must be one of auto, cpu, cuda", "did you mean 'cpu'"],
    "seed=-3": ["--set seed=-3", "0 <= seed < 2**63 must hold, but got seed=-3"],
    # a rule between a --set knob and the file's: the --set is named, not the file's line
    "d_model=65": ["error: --set d_model=65: fixed.d_model:", "n_heads must divide d_model, but got d_model=65"],
    # no token to continue: every trial's sample would fail
    # a trial would train on a GPU that Ray did not reserve for it, or fail (with tracebacks) where there is none
    "device=cuda": ["error: --set device=cuda: device 'cuda' needs a GPU for each trial", "--gpus-per-trial 1"],
    "prompt=": [
        "prompt must give at least one character token when sample_tokens > 0",
        "but got ''",
        "sample_tokens=0",
    ],
}

OPTIONS = {
    # command-line options, argparse's own refusals included: one line each too
    "--seed -1": ["--seed: seed must be an integer from 0 to 2**32 - 1", "but got -1"],
    "--seed 4294967296": ["--seed: seed must be an integer from 0 to 2**32 - 1", "but got 4294967296"],
    "--time-budget 0": ["argument --time-budget: expected a positive duration", "'0'", "--help"],
    "--num-samples abc": ["argument --num-samples: invalid int value: 'abc'", "--help"],
    "--bogus": ["unrecognized arguments: --bogus", "(see python -m artune.search --help)"],
    "--num-sampels 3": ["unrecognized arguments: --num-sampels 3 (did you mean --num-samples?)", "--help"],
    # what RAY_ADDRESS holds for the jobs CLI: Ray failed on it after seconds, with a traceback
    "--address http://127.0.0.1:8265": [
        "--address http://127.0.0.1:8265: that is the dashboard's address",
        "HOST:6379",
    ],
    # ports urlparse itself refuses (a ValueError): a traceback before
    "--address 127.0.0.1:abc": ["--address '127.0.0.1:abc': expected HOST:PORT"],
    "--address 127.0.0.1:70000": ["--address '127.0.0.1:70000': expected HOST:PORT"],
    "--address [::1": ["--address '[::1': expected HOST:PORT"],
}

NAMES = {
    # beyond tests/test_search.py's ../x, /abs and a/b
    "..": ["--name '..'", "no path"],
    "": ["--name ''", "a search name is"],  # was replaced by the default name (a review)
    ".hidden": ["--name '.hidden'", "starting with a letter or digit"],
    "a b": ["--name 'a b'"],
    "x" * 101: ["--name 'xxxx"],
    "a\\b": ["--name 'a\\\\b'"],
}

# No network: Tiny Shakespeare's download is refused at once by a proxy that is not there.
NO_NETWORK = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


@pytest.fixture(scope="module")
def refused(tmp_path_factory, shakespeare_path):
    """Every case that starts no Ray, run three at a time: {case: (result, results dir, extra)}."""
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    data.mkdir()
    (data / "empty.txt").write_bytes(b"")
    (data / "one_char.txt").write_text("a" * 5000)
    (data / "latin1.txt").write_bytes("to be or not to be, ".encode() * 3 + "caf\u00e9 au lait".encode("latin-1"))
    (data / "upper.txt").write_text(
        "TO BE, OR NOT TO BE: THAT IS THE QUESTION.\n" * 300
    )  # cannot encode the prompt 'It is'
    (data / "no_corpus_here").mkdir()
    marker = root / "pwned"
    cases: dict[str, tuple[list[str], dict]] = {}
    for name, (text, _) in SPACES.items():
        path = root / f"{name}.yaml"
        path.write_text(text.replace("{marker}", str(marker)))
        cases[f"space:{name}"] = ([str(path), "--data", str(shakespeare_path)], {})
    for item in SETS:
        cases[f"set:{item}"] = ([str(SMOKE), "--set", item, "--data", str(shakespeare_path)], {})
    for name in NAMES:
        cases[f"name:{name}"] = ([str(SMOKE), "--name", name], {})
    for option in OPTIONS:
        cases[f"option:{option}"] = ([str(SMOKE), *option.split(), "--data", str(shakespeare_path)], {})
    for name in ("missing.txt", "no_corpus_here", "empty.txt", "one_char.txt", "latin1.txt", "upper.txt"):
        cases[f"data:{name}"] = ([str(SMOKE), "--data", str(data / name)], NO_NETWORK)
    for name in ("missing.txt", "upper.txt"):  # a dry run checks the corpus as the search will
        cases[f"dry-run:{name}"] = ([str(SMOKE), "--data", str(data / name), "--dry-run"], NO_NETWORK)
    cases["set:dataset=missing"] = ([str(SMOKE), "--set", f"dataset={data / 'missing.txt'}"], NO_NETWORK)
    cases["ray_client"] = ([str(SMOKE), "--address", f"ray://127.0.0.1:{free_port()}"], {})
    cases["no_compiler"] = (
        [str(SMOKE), "--set", "compile=true", "--data", str(shakespeare_path)],
        {"CXX": str(root / "no" / "g++")},
    )

    def run(case: str):
        args, env = cases[case]
        results = root / "results" / case.replace(":", "_").replace("/", "_")
        start = time.monotonic()
        result = cli(*args, "--results-dir", str(results), timeout=120, env=env)
        return case, (result, results, time.monotonic() - start)

    with ThreadPoolExecutor(3) as pool:
        outcome = dict(pool.map(run, cases))
    return {"outcome": outcome, "root": root, "data": data, "marker": marker}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(refused, case: str, *fragments: str) -> str:
    result, results, _ = refused["outcome"][case]
    line = assert_one_error_line(result, *fragments)
    assert line.startswith("error: "), line
    assert not results.exists() or not any(results.iterdir()), list(results.iterdir())
    return line


@pytest.mark.parametrize("name", SPACES)
def test_a_bad_space_file(refused, name):
    path = refused["root"] / f"{name}.yaml"
    check(refused, f"space:{name}", *(f.format(path=path) for f in SPACES[name][1]))
    assert not refused["marker"].exists()  # the python tag was not run


@pytest.mark.parametrize("item", SETS)
def test_a_bad_set(refused, item):
    check(refused, f"set:{item}", *SETS[item])


@pytest.mark.parametrize("option", OPTIONS)
def test_a_bad_option(refused, option):
    check(refused, f"option:{option}", *OPTIONS[option])


@pytest.mark.parametrize("name", NAMES)
def test_a_name_that_is_not_one_directory_under_results_dir(refused, name):
    check(refused, f"name:{name}", *NAMES[name])


def test_a_corpus_directory_without_tiny_shakespeare_and_no_network(refused):
    directory = refused["data"] / "no_corpus_here"
    # --data DIR is the data directory: Tiny Shakespeare is fetched into it, and here cannot be
    check(
        refused,
        "data:no_corpus_here",
        "cannot download",
        f"place the file at {directory / 'tiny_shakespeare.txt'} by hand",
    )
    assert list(directory.iterdir()) == []  # no partial download left behind


def test_a_missing_corpus_file(refused):
    missing = refused["data"] / "missing.txt"
    check(refused, "data:missing.txt", "not found", str(missing))
    assert not missing.exists()


def test_a_missing_corpus_file_given_by_set_names_the_set(refused):
    """--set dataset=FILE gave "dataset file not found: FILE" without naming the option (a review)."""
    missing = refused["data"] / "missing.txt"
    line = check(refused, "set:dataset=missing", "not found")
    assert line.startswith(f"error: --set dataset={missing}: dataset file not found: {missing}"), line


def test_an_empty_corpus_file(refused):
    """The line names the option given, --data FILE (it said "--set dataset=FILE: fixed.dataset: ...")."""
    line = check(refused, "data:empty.txt", "empty.txt", "is empty")
    assert line.startswith(f"error: --data {refused['data'] / 'empty.txt'}: dataset file is empty"), line
    assert (refused["data"] / "empty.txt").read_bytes() == b""


def test_a_corpus_of_one_distinct_character(refused):
    check(refused, "data:one_char.txt", "one_char.txt", "has 1 distinct character token(s)", "at least 2")


def test_a_corpus_that_is_not_utf8_names_the_byte_offset(refused):
    # "to be or not to be, " * 3 is 60 bytes, "caf" 3 more: the Latin-1 e-acute is byte 63
    check(refused, "data:latin1.txt", "latin1.txt", "not valid UTF-8", "byte 0xe9 at byte offset 63", "iconv")


def test_a_prompt_the_corpus_cannot_encode_is_refused_before_any_trial(refused):
    check(
        refused,
        "data:upper.txt",
        "prompt 'It is'",
        f"not in the vocabulary of 17 built from the corpus {refused['data'] / 'upper.txt'}: 't', 'i', 's'",
        "--set prompt=",
    )


def test_a_dry_run_checks_the_corpus(refused):
    check(refused, "dry-run:missing.txt", "not found", str(refused["data"] / "missing.txt"))
    check(refused, "dry-run:upper.txt", "prompt 'It is'", "not in the vocabulary")


def test_compile_without_a_cpp_compiler_is_refused_before_any_trial(refused):
    """torch.compile builds its kernels with $CXX (else g++): without it every trial would fail at its first step."""
    check(
        refused, "no_compiler", "compile: true needs a C++ compiler for torch.compile", "no/g++", "--set compile=false"
    )


def test_a_ray_client_address_is_refused_naming_the_ways_that_work(refused):
    """Through Ray's client, Tune (and the callback that writes the tables) would run on the cluster."""
    result, _, _ = refused["outcome"]["ray_client"]
    check(refused, "ray_client", "ray://127.0.0.1:", "ray job submit", "--address HOST:6379")
    assert result.stdout == "", result.stdout  # refused with the plan, before any word of Ray (or a connection)


# --- cases that start Ray or a search


@pytest.fixture(scope="module")
def gpu_refusal(tmp_path_factory, small_corpus, ray_tmpdir):
    results = tmp_path_factory.mktemp("gpu") / "results"
    result = cli(
        str(SMOKE),
        "--gpus-per-trial",
        "1",
        "--results-dir",
        str(results),
        "--name",
        "gpu",
        "--data",
        str(small_corpus),
        env={"RAY_ADDRESS": ""},
        timeout=900,  # a hang guard: a local Ray instance starts and stops (tens of seconds on a slow machine)
    )
    return result, results, wait_for_ray_to_end(ray_tmpdir)


@pytest.mark.slow
def test_gpus_per_trial_on_a_cluster_without_gpus_is_refused_before_any_trial(gpu_refusal):
    result, results, left = gpu_refusal
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: gpu: 1.0 per trial, but the cluster has 0 GPUs; lower --gpus-per-trial or add GPU nodes", (
        last
    )
    assert " epoch " not in result.stdout  # no trial ran
    assert not results.exists() or not any(results.iterdir())
    assert left == 0, "the local Ray instance outlived the refused command"


@pytest.mark.slow
def test_gpus_per_trial_refusal_is_the_only_line_on_stderr(gpu_refusal):
    assert_one_error_line(gpu_refusal[0], "gpu: 1.0 per trial", "0 GPUs")


@pytest.mark.slow
def test_a_search_already_running_is_not_started_again(tmp_path, small_corpus, ray_tmpdir):
    space = tmp_path / "space.yaml"
    space.write_text(GOOD)
    results = tmp_path / "results"
    args = ["--results-dir", str(results), "--name", "busy", "--data", str(small_corpus)]
    first = Search(str(space), *args)
    directory = results / "busy"
    # the manifest is written under the lock, once Ray is up; its trial held while the two refusals run, so that
    # the search cannot end first however fast the machine
    first.hold_at(lambda: (directory / "manifest.json").exists(), 180, "the first search's manifest", ray_tmpdir)
    again = cli("--resume", *args, timeout=60)
    assert_one_error_line(again, "search 'busy' is running in another process", str(directory / ".lock"))
    fresh = cli(str(space), *args, timeout=60)  # (it said "already holds a search; use --resume", refused too)
    assert_one_error_line(fresh, "--name 'busy': the search is running in another process", str(directory / ".lock"))
    first.release(ray_tmpdir)
    # neither refusal disturbed the running search
    assert first.finish(240) == 0, first.stderr[-3000:]
    assert "search busy: 1 trial (1 completed)" in first.stdout
    manifest = json.loads((directory / "manifest.json").read_text())
    assert "resumed" not in manifest and not any("--resume" in command for command in manifest["commands"])
    # and a new search under the finished one's name is refused without touching it
    before = snapshot(directory)
    assert_one_error_line(cli(str(space), *args, timeout=60), "already holds a search")
    assert snapshot(directory) == before
