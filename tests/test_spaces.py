"""Search-space files: the shipped ones load, bad ones are refused with file and line, any text loads or is refused."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artune import humanize, spaces
from artune.config import FIELD_NAMES
from artune.spaces import SpaceError, load_space

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = """\
search:
  num_samples: 8
  max_concurrent: 2
  resources: {cpu: 1, gpu: 0}
  epochs: 3
  seed: 1
  scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
fixed:
  seq_len: 16
  batch_size: 4
params:
  d_model: {choice: [32, 64]}
  n_heads: {choice: [2, 4]}
  lr: {loguniform: [1e-4, 1e-2]}
  grad_norm_clip: {uniform: [0.5, 2.0]}
  n_layers: {int: [1, 3], step: 1, log: false}
  dataloader_shuffle_with_replacement: {choice: [true, false]}
  optimizer: {choice: [adamw, noam]}
"""

CONDITIONAL = """\
search: {num_samples: 8, epochs: 2}
params:
  warmup: {int: [10, 100], step: 10, when: {optimizer: noam}}
  optimizer: {choice: [adamw, noam]}
  d_model: {choice: [32, 64]}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- shipped files


def test_there_are_shipped_files() -> None:
    assert {"smoke.yaml", "default.yaml", "gpu.yaml"} <= {p.name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_loads_and_every_corner_is_a_valid_config(path: Path) -> None:
    space = load_space(path)
    space.check_configs()
    assert space.params, "a shipped space searches something"
    assert str(path) in space.describe()
    space.make_sampler()


def test_smoke_is_small() -> None:
    s = load_space(REPO / "search_spaces" / "smoke.yaml")
    assert s.settings.num_samples <= 4 and s.settings.epochs <= 3 and s.fixed["batches_per_epoch"] <= 20
    assert s.settings.gpu == 0 and s.settings.cpu == 1 and s.settings.max_concurrent == 2


def test_a_space_file_reads_as_documented(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    s = space.settings
    assert (s.metric, s.mode, s.num_samples, s.max_concurrent, s.epochs, s.seed) == ("valid_loss", "min", 8, 2, 3, 1)
    assert (s.cpu, s.gpu, s.scheduler, s.grace_period, s.reduction_factor, s.sampler) == (
        1.0,
        0.0,
        "asha",
        1,
        2.0,
        "tpe",
    )
    assert space.fixed == {"seq_len": 16, "batch_size": 4}
    assert space.params["lr"].kind == "loguniform" and space.params["lr"].low == 1e-4  # 1e-4 is a number
    assert space.params["lr"].line == 14
    assert space.params["dataloader_shuffle_with_replacement"].values == (True, False)
    assert len(space.text_sha256) == 64


@pytest.mark.parametrize(
    ("samples", "concurrent", "line"),
    [
        (8, "2", "8 trials, 2 at a time;"),
        (3, "5", "3 trials, as many at a time as the cluster fits;"),
        (1, "2", "1 trial;"),
        (4, "null", "4 trials, as many at a time as the cluster fits;"),
    ],
)
def test_the_dry_run_says_how_many_trials_run_at_once(tmp_path: Path, samples: int, concurrent: str, line: str) -> None:
    text = GOOD.replace("num_samples: 8", f"num_samples: {samples}").replace(
        "max_concurrent: 2", f"max_concurrent: {concurrent}"
    )
    assert f"  {line} 1 cpu + 0 gpu per trial" in load_space(write(tmp_path, text)).describe()


def test_defaults_and_fixed_values_under_params(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "params:\n  lr: {loguniform: ['1e-4', 1.0e-2]}\n  seq_len: 32\n"))
    assert space.fixed == {"seq_len": 32}  # a plain value under params is fixed
    assert space.params["lr"].low == 1e-4  # numbers written as quoted text are read as numbers too
    s = space.settings
    assert (s.metric, s.mode, s.scheduler, s.max_concurrent, s.sampler) == ("valid_loss", "min", "asha", None, "tpe")
    lr = "params: {lr: {loguniform: [1e-4, 1e-2]}}\n"
    acc = load_space(write(tmp_path, "search: {metric: valid_accuracy}\n" + lr, "a.yaml"))
    assert acc.settings.mode == "max"  # the mode follows the metric unless written
    none = load_space(write(tmp_path, "search: {scheduler: none}\n" + lr, "n.yaml"))
    assert none.settings.scheduler == "none"


# --------------------------------------------------------------------------- refusals, with file and line


def line_of(message: str, name: str = "space.yaml") -> list[int]:
    return [int(m) for m in re.findall(rf"{re.escape(name)}:(\d+)", message)]


def test_numbers_are_decimal_as_yaml_1_2_reads_them(tmp_path: Path) -> None:
    """012 was octal 10, 1:30 base-60 90, 0b11 binary 3: YAML 1.1's, not what a search-space file means."""
    space = load_space(write(tmp_path, "fixed:\n  n_layers: 012\n  seq_len: 0x20\n  lr: 1.5e-3\n  dropout: .1\n"))
    assert (space.fixed["n_layers"], space.fixed["seq_len"], space.fixed["lr"], space.fixed["dropout"]) == (
        12,
        32,
        1.5e-3,
        0.1,
    )
    assert yaml.safe_load("a: 1:30") == {"a": 90}  # PyYAML's own loader is left as it is


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"nope\.yaml: search-space file not found"):
        load_space(tmp_path / "nope.yaml")
    write(tmp_path, GOOD, "inside.yaml")
    with pytest.raises(SpaceError, match="directory.*inside.yaml"):
        load_space(tmp_path)


@pytest.mark.parametrize(
    "text, line, pattern",
    [
        ("", 1, "empty"),
        ("# only a comment\n", 1, "empty"),
        ("- a\n- b\n", 1, "top level must be a mapping"),
        ("params: {}\nserch: {}\n", 2, r"unknown section \(did you mean 'search'\?\)"),
        ("params:\n  lr: {loguniform: [1e-4, 1e-2]\n", 3, "YAML syntax"),
        ("params:\n  lr: [1, 2\n  x: 1\n", 3, "YAML syntax"),
        ("params:\n  lr: {choice: [1e-3]}\n  lr: {choice: [1e-2]}\n", 3, r"keys must be unique.*first at line 2"),
        ("search:\n  seed: 1\n  epochs: 2\n  seed: 2\nparams: {}\n", 4, "keys must be unique"),
        # each error names its key, these two too (a review)
        (
            "search:\n  resources: {workers: 9}\nfixed: {batch_size: 4}\n",
            2,
            r"space\.yaml:2: search\.resources\.workers: workers <= batch_size must hold",
        ),
        # YAML 1.1 read 1:30 as 90 (base 60) and 012 as 10 (octal): text here, which the rules refuse or read as 12
        ("search:\n  time_budget: 1:30\nparams: {}\n", 2, r"time_budget must be a positive duration.*got '1:30'"),
        ("search:\n  num_samples: 1:00\nparams: {}\n", 2, r"num_samples >= 1 must hold.*got '1:00'"),
        (
            "params:\n  lr: !!python/object/apply:os.system [ls]\n",
            2,
            r"python tags are refused, but got !!python/object/apply:os.system",
        ),
        ("params:\n  d_modle: {choice: [32]}\n", 2, r"unknown key 'd_modle' \(did you mean 'd_model'\?\)"),
        ("fixed:\n  seq_len: 8\n  lrr: 0.1\n", 3, r"did you mean 'lr'"),
        ("params:\n  lr: {uniform: [2.0, 1.0]}\n", 2, r"low <= high must hold, but got low=2, high=1"),
        ("params:\n  lr: {loguniform: [0, 1.0]}\n", 2, "loguniform needs low > 0"),
        ("params:\n  n_layers: {int: [0, 8], log: true}\n", 2, "log needs low >= 1"),
        ("params:\n  d_model: {choice: []}\n", 2, "non-empty list"),
        ("params:\n\n  n_layers: {int: [1, 4], step: 0}\n", 3, "step >= 1 must hold"),
        ("params:\n  n_layers: {int: [1, 4], step: 2}\n", 2, r"multiple of step.*fix: high=3"),
        ("params:\n  lr: {uniform: [0.1, 1], step: 0.4}\n", 2, r"high - low must be a multiple of step, but got"),
        (
            "params:\n  dropout: {uniform: [0, 1], step: 1e-6}\n",
            2,
            r"a step gives at most 100000 values \(leave step out for a continuous uniform\), .*: 1000001 values",
        ),
        ("params:\n  n_layers: {int: [1.5, 4]}\n", 2, "int bounds must be integers"),
        # a float past 2**53 is no exact integer, and torch and Optuna hold int64: 1e30 was 10**30 and some (a review)
        ("params:\n  warmup: {int: [0, 1e20]}\n", 2, r"int bounds must be integers \(within int64\)"),
        ("params:\n  warmup: {int: [0, 100000000000000000000]}\n", 2, r"int bounds must be integers"),
        ("fixed:\n  d_model: 1e30\n", 2, r"fixed\.d_model: d_model must be an integer, but got 1e\+30"),
        ("params:\n  lr: {uniform: [a, b]}\n", 2, "uniform bounds must be finite numbers, but got \\['a', 'b'\\]"),
        ("params:\n  lr: {uniform: 0.1}\n", 2, r"needs \[low, high\]"),
        ("params:\n  d_model: {uniform: [32, 64]}\n", 2, r"d_model is an integer \(fix: use \{int"),
        ("params:\n  optimizer: {int: [1, 2]}\n", 2, "optimizer is text"),
        ("params:\n  lr: {loguniform: [1e-4, 1e-2], stepp: 2}\n", 2, "unknown option for loguniform"),
        ("params:\n  lr: {loguniform: [1e-4, 1e-2], uniform: [1, 2]}\n", 2, "exactly one of"),
        ("params:\n  lr: {low: 1}\n", 2, "needs one of loguniform"),
        ("params:\n  d_model: [32, 64]\n", 2, r"fix: \{choice: \[32, 64\]\}"),
        ("params:\n  n_heads: {choice: [2, 2.0]}\n", 2, "distinct"),
        ("params:\n  n_heads: {choice: [2, x]}\n", 2, "n_heads must be an integer, but got 'x'"),
        ("fixed:\n  seq_len: 8\nparams:\n  seq_len: {choice: [8, 16]}\n", 4, "either fixed or searched"),
        ("fixed:\n  epochs: 3\n", 2, "epochs is a search setting"),
        (
            "params:\n  tokenizer: {choice: [character, basic_english]}\n",
            2,
            r"params.tokenizer: tokenizer is one for the whole search",
        ),
        (
            "params:\n  lr: {uniform: [0.1, 1]}\n  dataset: {choice: [tiny_shakespeare, other.txt]}\n",
            3,
            "corpus is encoded once",
        ),
        ("fixed:\n  lr: {loguniform: [1e-4, 1e-2]}\n", 2, "move it to params"),
        ("search:\n  num_samples: 0\n", 2, r"search.num_samples: num_samples >= 1 must hold.*but got 0"),
        ("search:\n  resources: {cpu: 0}\n", 2, "cpu > 0 must hold"),
        ("search:\n  resources:\n    cpu: 1\n    gpu: 1.5\n", 4, r"gpu <= 1 must hold \(GPUs per worker.*but got 1.5$"),
        ("search:\n  resources: {gpu: -1}\n", 2, "gpu >= 0"),
        ("search:\n  resources: {workers: 0}\n", 2, r"search.resources.workers: workers >= 1 must hold.*but got 0"),
        ("search:\n  resources: {workers: 1.5}\n", 2, "workers >= 1 must hold"),
        (
            "search:\n  resources:\n    gpu: 2\n",
            3,
            r"search.resources.gpu: gpu <= 1 must hold \(GPUs per worker.*but got 2 "
            r"\(fix: resources: \{workers: 2, gpu: 1\}",
        ),
        ("search:\n  resources: {cpus: 1}\n", 2, r"did you mean 'cpu'"),
        ("search:\n  epochs: 2\n  scheduler: {name: asha, grace_period: 3}\n", 3, "grace_period <= epochs"),
        ("search:\n  scheduler: {name: asha, reduction_factor: 1}\n", 2, "reduction_factor > 1"),
        ("search:\n  scheduler: hyperband\n", 2, "scheduler must be one of asha, none"),
        ("search:\n  mode: maximum\n", 2, "mode must be min or max"),
        ("search:\n  metric: valid_accuracy\n  mode: min\n", 3, "mode must be max"),
        ("search:\n  metric: val_loss\n", 2, r"did you mean 'valid_loss'"),
        ("search:\n  sampler: tpee\n", 2, r"did you mean 'tpe'"),
        ("search:\n  num_sample: 3\n", 2, r"did you mean 'num_samples'"),
        ("search:\n  max_concurrent: 0\n", 2, "max_concurrent >= 1"),
        (
            "search: {sampler: grid}\nparams:\n  d_model: {choice: [32, 64]}\n  lr: {loguniform: [1e-4, 1e-2]}\n",
            4,
            "grid sampler needs a finite set",
        ),
        ("params:\n  warmup: {int: [1, 9], when: {optimizer: noam}}\n", 2, "can never hold"),
        # a typo in a fixed value that a condition reads: the typo's line, not "the condition can never hold"
        (
            "fixed:\n  optimizer: nom\nparams:\n  warmup: {int: [1, 9], when: {optimizer: noam}}\n",
            2,
            r"fixed\.optimizer: optimizer must be one of .*but got 'nom' \(did you mean 'noam'\?\)",
        ),
        # a value the knob is never sampled as, beside one it is (a typo); a continuous knob's equality; off its steps
        (
            "params:\n  optimizer: {choice: [noam, adamw]}\n"
            "  warmup: {int: [1, 9], when: {optimizer: [noam, adamww]}}\n",
            3,
            r"params\.warmup\.when\.optimizer: optimizer is choice \[.*\], so it is never \['adamww'\]",
        ),
        (
            "params:\n  dropout: {uniform: [0, 0.2]}\n  warmup: {int: [1, 9], when: {dropout: 0.1}}\n",
            3,
            r"a condition on a continuous knob holds only by chance, since dropout is uniform \[0, 0\.2\]; give",
        ),
        (
            "params:\n  dropout: {uniform: [0, 0.2], step: 0.05}\n  warmup: {int: [1, 9], when: {dropout: 0.07}}\n",
            3,
            "the condition can never hold, since dropout is uniform",
        ),
        ("params:\n  warmup: {int: [1, 9], when: {optimiser: noam}}\n", 2, r"did you mean 'optimizer'"),
        (
            "params:\n  a: 1\n  lr: {uniform: [0.1, 1]}\n  warmup: {int: [1, 9], when: {optimizer: bogus}}\n",
            2,
            "unknown key 'a'",
        ),
        ("params:\n  lr: 1\n\x01\n", 3, "printable text"),
    ],
)
def test_bad_file_is_refused_naming_file_and_line(tmp_path: Path, text: str, line: int, pattern: str) -> None:
    message = refused(tmp_path, text)
    assert re.search(pattern, message), message
    assert line in line_of(message), message


def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    text = (
        "search:\n  num_samples: 0\nparams:\n  d_modle: {choice: [32]}\n  lr: {uniform: [2, 1]}\n"
        "  warmup: {int: [1, 10], when: {optimizer: nadam}}\n"
    )
    message = refused(tmp_path, text)
    assert line_of(message) == [2, 4, 5, 6] and message.count("; ") == 3
    assert "space.yaml:6: params.warmup.when.optimizer: the condition can never hold" in message


def test_a_condition_on_a_refused_knob_waits_for_it(tmp_path: Path) -> None:
    # Judged against the default instead, the condition would be reported too, as if it were the mistake.
    text = (
        "search:\n  epochs: 0\nparams:\n  optimizer: {choice: [adam, noam], stepp: 1}\n"
        "  warmup: {int: [1, 9], when: {optimizer: noam}}\n  lr: {uniform: [0.1, 0.2], when: {epochs: 3}}\n"
    )
    message = refused(tmp_path, text)
    assert line_of(message) == [2, 4] and "can never hold" not in message


def test_numbers_yaml_11_reads_as_text_are_numbers(tmp_path: Path) -> None:
    text = "fixed:\n  lr: 3e-4\n  weight_decay: 1.0e-2\nparams:\n  grad_norm_clip: {choice: [1e0, 2E+0]}\n"
    space = load_space(write(tmp_path, text))
    assert space.fixed == {"lr": 3e-4, "weight_decay": 1e-2}
    assert space.params["grad_norm_clip"].values == (1.0, 2.0)
    # ... but text that merely looks like a number stays text where text is wanted.
    assert load_space(write(tmp_path, "fixed:\n  prompt: '1e3'\nparams: {}\n", "p.yaml")).fixed["prompt"] == "1e3"


# --------------------------------------------------------------------------- any text: loads or SpaceError


KEYS = st.sampled_from(
    [
        "search",
        "fixed",
        "params",
        "when",
        "choice",
        "int",
        "uniform",
        "loguniform",
        "step",
        "log",
        "resources",
        "scheduler",
        "name",
        "grace_period",
        "epochs",
        "sampler",
        "num_samples",
        "metric",
        "mode",
        "cpu",
        "gpu",
        "workers",
        "optimizer",
        "noam",
        "asha",
        "grid",
        "xyz",
        "",
    ]
    + list(FIELD_NAMES[:12])
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(
        ["1e-3", "tpe", "grid", "qmc", "cmaes", "random", "none", "asha", "noam", "min", "max", "valid_accuracy"]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def loads_or_space_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8"))
    try:
        space = load_space(path)
        space.check_configs()
        space.describe()
        space.make_sampler()
    except SpaceError as error:
        assert "fuzz.yaml" in str(error) and "\n" not in str(error)


@settings(max_examples=80, deadline=None, suppress_health_check=HEALTH)
@given(document=st.dictionaries(KEYS, VALUES, max_size=4))
def test_any_mapping_loads_or_raises_space_error(tmp_path: Path, document: dict) -> None:
    loads_or_space_error(yaml.safe_dump(document, default_flow_style=None), tmp_path)


@settings(max_examples=80, deadline=None, suppress_health_check=HEALTH)
@given(text=st.one_of(st.text(max_size=80), st.text(alphabet=":-[]{}!&*#|>'\"%@` \n\tab1e.", max_size=60)))
def test_any_text_loads_or_raises_space_error(tmp_path: Path, text: str) -> None:
    loads_or_space_error(text, tmp_path)


def test_the_package_keeps_its_public_names() -> None:
    """Code, notebooks and the driver import these from artune.spaces; parse_duration lives in artune.humanize."""
    names = {
        "load_space",
        "SearchSpace",
        "Distribution",
        "SearchSettings",
        "SpaceError",
        "METRICS",
        "SAMPLERS",
        "SCHEDULERS",
        "MAX_CORNERS",
        "SETTING_NAMES",
        "OVERRIDE_FLAGS",
        "parse_duration",
    }
    assert names <= set(spaces.__all__) and all(hasattr(spaces, name) for name in spaces.__all__)
    assert spaces.parse_duration is humanize.parse_duration
    assert spaces.METRICS["valid_loss"] == "min" and spaces.METRICS["valid_accuracy"] == "max"
