import argparse
import dataclasses
import math
import re

import pytest

from artune.config import (
    FIELD_NAMES,
    FIELDS,
    ConfigError,
    TrainConfig,
    add_config_arguments,
    coerce,
    config_from_arguments,
    field_doc,
)

# --- defaults and docs


def test_documented_defaults():
    c = TrainConfig()
    assert c.batch_size == 16
    assert c.seq_len == 512
    assert c.d_model == 512
    assert c.grad_norm_clip == 1.0
    assert c.sample_tokens == 25
    assert c.dataloader_shuffle_with_replacement is False
    assert c.compile is False
    assert c.dataset == "tiny_shakespeare"
    assert c.tokenizer == "character"
    assert c.optimizer == "adam"
    assert c.d_ff is None and c.ff_width == 4 * 512


def test_every_field_has_a_doc():
    undocumented = [name for name in FIELD_NAMES if not field_doc(name).strip()]
    assert undocumented == []
    assert len(FIELD_NAMES) == len(dataclasses.fields(TrainConfig)) > 20


def test_config_is_frozen_and_round_trips_through_its_dict():
    c = TrainConfig(d_model=64, n_heads=4, lr=3e-3, d_ff=100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_separator_follows_the_tokenizer_unless_set():
    assert TrainConfig().separator == ""
    assert TrainConfig(tokenizer="basic_english").separator == " "
    assert TrainConfig(tokenizer="basic_english", prompt_separator="_").separator == "_"


# --- unknown keys


def test_unknown_key_suggests_the_close_field():
    with pytest.raises(ConfigError, match=r"unknown key 'd_modle'") as info:
        TrainConfig.from_dict({"d_modle": 64})
    assert "did you mean 'd_model'?" in str(info.value)


@pytest.mark.parametrize(
    ("other", "ours"),
    [
        ("learning_rate", "lr"),
        ("n_embd", "d_model"),
        ("block_size", "seq_len"),
        ("n_layer", "n_layers"),
        ("grad_clip", "grad_norm_clip"),
        ("beta2", "adam_beta2"),
        ("position_embedding_type", "position_encoding"),
        ("hidden_act", "activation"),
    ],
)
def test_an_unknown_key_that_another_trainer_uses_suggests_artunes_name(other, ours):
    with pytest.raises(ConfigError, match=re.escape(f"unknown key '{other}' (did you mean '{ours}'?)")):
        TrainConfig.from_dict({other: 1})


def test_every_unknown_key_is_reported():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"batchsize": 4, "zzzzzz": 1, "lr": 0.1})
    message = str(info.value)
    assert "unknown key 'batchsize' (did you mean 'batch_size'?)" in message
    assert "unknown key 'zzzzzz'" in message and "zzzzzz' (did you mean" not in message


# --- bad values: each message names the field and the value


@pytest.mark.parametrize(
    ("values", "field", "shown"),
    [
        ({"lr": -1.0}, "lr", "-1.0"),
        ({"lr": 0.0}, "lr", "0.0"),
        ({"lr": math.nan}, "lr", "nan"),
        ({"lr": math.inf}, "lr", "inf"),
        ({"grad_norm_clip": 0.0}, "grad_norm_clip", "0.0"),
        ({"grad_norm_clip": -2.5}, "grad_norm_clip", "-2.5"),
        ({"grad_norm_clip": math.nan}, "grad_norm_clip", "nan"),
        ({"batch_size": 0}, "batch_size", "0"),
        ({"batch_size": -3}, "batch_size", "-3"),
        ({"seq_len": 0}, "seq_len", "0"),
        ({"seq_len": -16}, "seq_len", "-16"),
        ({"d_model": 64, "n_heads": 3}, "n_heads", "n_heads=3"),
        ({"tokenizer": "bpe"}, "tokenizer", "'bpe'"),
        ({"optimizer": "sgd"}, "optimizer", "'sgd'"),
        ({"device": "tpu"}, "device", "'tpu'"),
        ({"precision": "fp16"}, "precision", "'fp16'"),
        ({"train_loader": "random"}, "train_loader", "'random'"),
        ({"valid_loader": "random"}, "valid_loader", "'random'"),
        ({"dropout": 1.0}, "dropout", "1.0"),
        ({"dropout": -0.1}, "dropout", "-0.1"),
        ({"dropout": math.nan}, "dropout", "nan"),
        ({"optimizer": "noam", "warmup": 0}, "warmup", "warmup=0"),
        ({"weight_decay": -0.01}, "weight_decay", "-0.01"),
        ({"d_ff": 0}, "d_ff", "0"),
        ({"batches_per_epoch": 0}, "batches_per_epoch", "0"),
        ({"sample_tokens": -1}, "sample_tokens", "-1"),
        ({"epochs": 0}, "epochs", "0"),
        ({"lr_schedule": "cosin"}, "lr_schedule", "did you mean 'cosine'"),
        ({"lr_min_ratio": 1.5}, "lr_min_ratio", "1.5"),
        ({"lr_min_ratio": -0.1}, "lr_min_ratio", "-0.1"),
        ({"adam_beta2": 1.0}, "adam_beta2", "1.0"),
        ({"adam_beta2": -0.5}, "adam_beta2", "-0.5"),
        ({"adam_beta2": math.nan}, "adam_beta2", "nan"),
        ({"position_encoding": "rotary"}, "position_encoding", "'rotary'"),
        ({"position_encoding": "rope", "d_model": 12, "n_heads": 4}, "position_encoding", "d_model=12, n_heads=4"),
        ({"activation": "swiglue"}, "activation", "did you mean 'swiglu'"),
    ],
)
def test_bad_value_names_field_and_value(values, field, shown):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**values)
    message = str(info.value)
    assert field in message
    assert shown in message
    # from_dict gives the same verdict
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict(values)


def test_noam_message_names_the_optimizer():
    with pytest.raises(ConfigError, match=r"'noam' needs warmup > 0, but got warmup=0"):
        TrainConfig(optimizer="noam")
    assert TrainConfig(optimizer="noam", warmup=10).warmup == 10


def test_n_heads_message_names_both_sizes():
    with pytest.raises(ConfigError, match=r"n_heads must divide d_model, but got d_model=64, n_heads=3"):
        TrainConfig(d_model=64, n_heads=3)


def test_compile_mode_is_torch_compiles_and_needs_compile():
    assert TrainConfig(compile=True, compile_mode="reduce-overhead").compile_mode == "reduce-overhead"
    with pytest.raises(
        ConfigError, match=r"compile_mode 'reduce-overhead' needs compile: true or 'auto', but got compile=False"
    ):
        TrainConfig(compile_mode="reduce-overhead")
    with pytest.raises(
        ConfigError, match=r"compile_mode must be one of default, reduce-overhead, .*did you mean 'reduce-overhead'"
    ):
        TrainConfig(compile=True, compile_mode="reduce_overhead")


def test_misspelt_choice_suggests_the_close_one():
    with pytest.raises(
        ConfigError,
        match=r"tokenizer must be one of character, basic_english, but got 'charcter' \(did you mean 'character'\?\)",
    ):
        TrainConfig(tokenizer="charcter")
    with pytest.raises(
        ConfigError, match=r"device must be one of auto, cpu, cuda, but got 'cdua' \(did you mean 'cuda'\?\)"
    ):
        TrainConfig(device="cdua")


def test_wrong_type_is_an_error_not_a_crash():
    with pytest.raises(ConfigError, match=r"lr must be of type float, but got 'fast'"):
        TrainConfig(lr="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"batch_size must be of type int, but got True"):
        TrainConfig(batch_size=True)
    with pytest.raises(ConfigError, match=r"seq_len must be of type int, but got 3.5"):
        TrainConfig(seq_len=3.5)  # type: ignore[arg-type]


def test_several_errors_are_reported_together():
    with pytest.raises(ConfigError) as info:
        TrainConfig(lr=-1.0, batch_size=0, tokenizer="bpe", dropout=2.0)
    message = str(info.value)
    for part in ("lr=-1.0", "batch_size=0", "'bpe'", "dropout=2.0"):
        assert part in message
    assert message.count(";") == 3


# --- from_dict coercion (YAML, Ray and CLI values)


def test_every_unknown_key_and_value_of_the_wrong_type_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({"lr": "abc", "d_model": "x", "bogus": 1})
    assert str(error.value) == (
        "unknown key 'bogus' (the keys: docs/configuration.md); lr must be a number, but got 'abc'; d_model must be an "
        "integer, but got 'x'"
    )


def test_from_dict_coerces_text():
    c = TrainConfig.from_dict(
        {
            "lr": "1e-3",
            "d_model": "64",
            "n_heads": "4",
            "compile": "true",
            "dataloader_shuffle_with_replacement": "Yes",
            "is_save_models": "false",
            "d_ff": "none",
            "batches_per_epoch": "NULL",
            "seq_len": "32.0",
            "dropout": "0",
        }
    )
    assert c.lr == 1e-3 and isinstance(c.lr, float)
    assert c.d_model == 64 and isinstance(c.d_model, int)
    assert c.n_heads == 4
    assert c.compile is True
    assert TrainConfig.from_dict({"compile": "Auto"}).compile == "auto"
    assert c.dataloader_shuffle_with_replacement is True
    assert c.is_save_models is False
    assert c.d_ff is None and c.batches_per_epoch is None
    assert c.seq_len == 32 and isinstance(c.seq_len, int)
    assert c.dropout == 0.0 and isinstance(c.dropout, float)


@pytest.mark.parametrize("text", ["none", "None", "NULL", "null"])
def test_none_is_none_for_every_optional_field(text):
    # Whatever the base type: d_ff is an int or none, prompt_separator text or none.
    assert (
        coerce("d_ff", text) is None
        and coerce("batches_per_epoch", text) is None
        and coerce("prompt_separator", text) is None
    )
    config = config_from_arguments(_parser().parse_args(["--prompt_separator", text, "--tokenizer", "basic_english"]))
    assert config.prompt_separator is None and config.separator == " "
    assert coerce("prompt", text) == text  # a text field that cannot be None keeps the word


def test_from_dict_accepts_numbers_for_floats_and_integral_floats_for_ints():
    c = TrainConfig.from_dict({"lr": 1, "batch_size": 8.0})
    assert c.lr == 1.0 and isinstance(c.lr, float)
    assert c.batch_size == 8 and isinstance(c.batch_size, int)


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("lr", "fast", r"lr must be a number, but got 'fast'"),
        ("d_model", "64.5", r"d_model must be an integer, but got '64.5'"),
        ("d_model", 64.5, r"d_model must be an integer, but got 64.5"),
        ("batch_size", True, r"batch_size must be an integer, but got True"),
        ("compile", "maybe", r"compile must be true, false or 'auto', but got 'maybe'"),
        ("is_save_models", "auto", r"is_save_models must be true or false, but got 'auto'"),
        ("seq_len", "none", r"seq_len must be an int, but got None"),
        ("tokenizer", 3, r"tokenizer must be text, but got 3"),
        # past int64 (torch's and Optuna's): it said "must be an integer" of an integer
        ("seed", "9223372036854775808", r"seed must be an integer from -2\*\*63 to 2\*\*63 - 1, but got '9223"),
        ("seed", 2**63, r"seed must be an integer from -2\*\*63 to 2\*\*63 - 1, but got 9223"),
    ],
)
def test_from_dict_refuses_what_it_cannot_coerce(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig.from_dict({key: value})


def test_an_integer_written_in_digits_is_read_exactly_whatever_its_size():
    """'9007199254740993' (2**53 + 1) went through a float, which cannot hold it, and was refused."""
    assert TrainConfig.from_dict({"seed": "9007199254740993"}).seed == 2**53 + 1
    assert TrainConfig.from_dict({"seed": " +12 "}).seed == 12 and TrainConfig.from_dict({"seed": "1e3"}).seed == 1000


def test_coerce_unwraps_numpy_like_scalars():
    class Scalar:  # what a sampler hands over: a number behind .item()
        def __init__(self, v):
            self.v = v

        def item(self):
            return self.v

    assert coerce("d_model", Scalar(128)) == 128
    assert coerce("lr", Scalar(0.5)) == 0.5


# --- argparse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_config_arguments(parser)
    return parser


def test_no_arguments_give_the_defaults():
    assert config_from_arguments(_parser().parse_args([])) == TrainConfig()


def test_arguments_are_coerced():
    args = _parser().parse_args(
        [
            "--lr",
            "3e-3",
            "--d_model",
            "64",
            "--n_heads",
            "4",
            "--compile",
            "true",
            "--d_ff",
            "none",
            "--prompt",
            "To be",
        ]
    )
    assert config_from_arguments(args) == TrainConfig(lr=3e-3, d_model=64, n_heads=4, compile=True, prompt="To be")


def test_a_knob_takes_hyphens_as_the_other_options_do():
    """--checkpoint-dir beside --batches_per_epoch: --batches-per-epoch was 'unrecognized arguments' (a review)."""
    args = _parser().parse_args(
        ["--batches-per-epoch", "3", "--seq_len", "16", "--dataloader-shuffle-with-replacement", "true"]
    )
    assert config_from_arguments(args) == TrainConfig(
        batches_per_epoch=3, seq_len=16, dataloader_shuffle_with_replacement=True
    )


def test_config_round_trips_through_argparse():
    original = TrainConfig(
        dataset="some/file.txt",
        tokenizer="basic_english",
        seq_len=32,
        batch_size=4,
        d_model=48,
        n_heads=6,
        n_layers=1,
        d_ff=96,
        dropout=0.25,
        optimizer="noam",
        lr=0.7,
        warmup=40,
        grad_norm_clip=0.5,
        batches_per_epoch=7,
        prompt="to be or",
        prompt_separator="|",
        sample_tokens=3,
        seed=9,
        device="cpu",
        precision="bf16",
        compile=True,
        is_save_models=False,
        is_log_model_params_grads=True,
        dataloader_shuffle_with_replacement=True,
        train_loader="sequential",
        valid_loader="shuffled",
    )
    argv = []
    for name, value in original.to_dict().items():
        if value is not None:
            argv += [f"--{name}", str(value)]
    assert config_from_arguments(_parser().parse_args(argv)) == original


def test_bad_argument_raises_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"lr > 0 must hold \(finite\), but got lr=-1.0"):
        config_from_arguments(_parser().parse_args(["--lr", "-1"]))
    with pytest.raises(ConfigError, match=r"d_model must be an integer, but got 'big'"):
        config_from_arguments(_parser().parse_args(["--d_model", "big"]))


def test_help_lists_every_field_with_its_doc_and_default():
    text = "".join(_parser().format_help().split())  # argparse wraps lines (also at hyphens)
    for name in FIELD_NAMES:
        assert f"--{name}" in text
        assert "".join(field_doc(name).split()) in text
    assert f"(default:{FIELDS['batch_size'].default!r})" in text


@pytest.mark.parametrize(
    ("d_model", "d_ff", "activation", "width"),
    [
        (128, None, "gelu", 512),
        (128, None, "relu2", 512),
        (128, None, "swiglu", 344),
        (96, None, "swiglu", 256),
        (128, 300, "swiglu", 300),
        (128, 300, "gelu", 300),
    ],
)
def test_the_feed_forward_width_defaults_to_the_same_weights_for_every_activation(d_model, d_ff, activation, width):
    """none is 4 * d_model; swiglu's third matrix makes it 8/3 * d_model, rounded up to a multiple of 8."""
    assert TrainConfig(d_model=d_model, n_heads=4, d_ff=d_ff, activation=activation).ff_width == width


def test_the_reference_command_answers_help_and_refuses_anything_else():
    """``python -m artune.config --help`` was refused as an unknown argument, exit 2."""
    import subprocess
    import sys

    run = [sys.executable, "-m", "artune.config"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--markdown" in helped.stdout, helped.stderr
    refused = subprocess.run([*run, "--bogus"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("error: "), refused.stderr


def test_an_unknown_option_is_given_the_closest_one_and_nothing_else_is():
    """A mistyped flag gets a did-you-mean in its one line (argparse gives none before Python 3.14); an invalid
    choice, a flag after a bare --, or a flag like no other, none."""
    from artune import ArgumentParser

    class Told(ArgumentParser):
        def exit(self, status: int = 0, message: str | None = None):
            assert status == 2
            raise SystemExit(message)  # the one line it would print, as the exit's code

    parser = Told(prog="p")
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--sampler", choices=["tpe", "random"])
    parser.add_argument("rest", nargs="?")

    def error(*argv: str) -> str:
        with pytest.raises(SystemExit) as told:
            parser.parse_args(list(argv))
        return str(told.value.code)

    assert "(did you mean --num-samples?)" in error("x", "--num-sampels", "3")
    assert "did you mean" not in error("--sampler", "unrecognized")
    assert "did you mean" not in error("x", "y", "--", "--num-samples")
    assert "did you mean" not in error("--bogus")
