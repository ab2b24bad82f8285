"""TrainConfig: every trainer knob, its default and a one-line doc, validated when built.

This module uses the standard library only, so a search-space file or a CLI flag can be checked
against it before torch or Ray is imported. A knob keeps its field name everywhere: the YAML key,
the Optuna parameter, the dict Ray hands ``train_fn``, and the parquet column.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import shutil
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from artune.errors import ConfigError  # noqa: F401  (re-exported)
from artune.humanize import as_int, is_whole  # noqa: F401  (as_int re-exported)


def _doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose one-line doc lives in its metadata (shown by ``--help``)."""
    return field(metadata={"doc": text}, **kwargs)


OPTIMIZERS = ("adam", "adamw", "noam", "muon")
TOKENIZERS = ("character", "basic_english")
LOADERS = ("shuffled", "sequential")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
LR_SCHEDULES = ("constant", "cosine", "linear")
POSITION_ENCODINGS = ("learned", "rope")
ACTIVATIONS = ("gelu", "swiglu", "relu2")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of one training run. Defaults follow labml's NLPAutoRegressionConfigs."""

    # --- data
    dataset: str = _doc("'tiny_shakespeare' or a path to any UTF-8 text file", default="tiny_shakespeare")
    tokenizer: str = _doc("'character' or 'basic_english' (torchtext's rules)", default="character")
    seq_len: int = _doc("tokens per training window (the context length)", default=512)
    batch_size: int = _doc("windows per batch", default=16)
    train_loader: str = _doc("'shuffled' windows or 'sequential' streams for training", default="shuffled")
    valid_loader: str = _doc(
        "'shuffled' (fixed order) or 'sequential'; always a full deterministic pass", default="sequential"
    )
    dataloader_shuffle_with_replacement: bool = _doc("draw shuffled windows with replacement", default=False)
    # --- model
    d_model: int = _doc("transformer width (embedding size)", default=512)
    n_layers: int = _doc("transformer blocks", default=6)
    n_heads: int = _doc("attention heads; must divide d_model", default=8)
    d_ff: Optional[int] = _doc(
        "feed-forward width; none = 4 * d_model, or for swiglu 8/3 * d_model rounded up to a multiple of 8 "
        "(the same weights)",
        default=None,
    )
    activation: str = _doc(
        "the feed-forward's nonlinearity: 'gelu' (GPT-2's), 'swiglu' (silu(x W) * (x V), Shazeer 2020) "
        "or 'relu2' (squared ReLU)",
        default="gelu",
    )
    dropout: float = _doc("dropout probability in [0, 1)", default=0.0)
    position_encoding: str = _doc(
        "'learned' positions added to the token embedding (GPT-2's), or 'rope' (rotary; d_model / n_heads "
        "must be even)",
        default="learned",
    )
    # --- optimisation
    optimizer: str = _doc(
        "'adam' (origin), 'adamw', 'noam' (warm-up then step**-0.5, scaled by d_model**-0.5), or 'muon' "
        "(Muon on the blocks' weight matrices, AdamW on the rest; lr and weight_decay as AdamW's)",
        default="adam",
    )
    lr: float = _doc("learning rate (for noam: the multiplier of its schedule)", default=1e-3)
    weight_decay: float = _doc("weight decay (decoupled for adamw and muon)", default=0.0)
    adam_beta2: Optional[float] = _doc("Adam's second-moment decay (beta2); none = 0.999 (0.98 for noam)", default=None)
    warmup: int = _doc("linear warm-up steps (noam: its warm-up, must be > 0)", default=0)
    lr_schedule: str = _doc(
        "'constant' (origin), or 'cosine'/'linear' decay from lr to lr * lr_min_ratio over the planned steps "
        "(under a time budget, the epochs that fit)",
        default="constant",
    )
    lr_min_ratio: float = _doc("where a decaying lr_schedule ends, as a fraction of lr", default=0.1)
    grad_norm_clip: float = _doc("clip the global gradient norm to this value", default=1.0)
    epochs: int = _doc("training epochs (each followed by validation and a sample)", default=10)
    batches_per_epoch: Optional[int] = _doc(
        "cap on training batches per epoch; none = a full pass (a capped sequential epoch goes on where the "
        "last one stopped)",
        default=None,
    )
    # --- sampling
    prompt: str = _doc("prompt for the greedy sample after each epoch", default="It is")
    prompt_separator: Optional[str] = _doc(
        "joins sampled tokens; none = '' for character, ' ' for basic_english", default=None
    )
    sample_tokens: int = _doc("tokens greedily sampled after each epoch", default=25)
    # --- runtime
    seed: int = _doc("seeds model init, batch order and dropout", default=0)
    device: str = _doc("'auto', 'cpu' or 'cuda'", default="auto")
    precision: str = _doc(
        "'fp32', 'bf16' (autocast) or 'auto' (bf16 where the GPU computes in it natively, or where the CPU's bf16 "
        "matmuls are native and faster)",
        default="fp32",
    )
    compile: Union[bool, str] = _doc(
        "torch.compile the model for training: true (needs a C++ compiler: $CXX, else g++), false, or 'auto' "
        "(compile once the trial has trained long enough to pay it back); true and 'auto' skip an epoch's "
        "partial last batch",
        default=False,
    )
    compile_mode: str = _doc(
        "torch.compile's mode, with compile: 'default', 'reduce-overhead' (CUDA graphs, for short GPU steps), "
        "'max-autotune' or 'max-autotune-no-cudagraphs'",
        default="default",
    )
    is_save_models: bool = _doc("write a checkpoint after every epoch", default=True)
    is_log_model_params_grads: bool = _doc(
        "add per-layer parameter and gradient statistics (the epoch's last gradients, before clipping) to the metrics",
        default=False,
    )
    is_log_model_activations: bool = _doc("add per-layer activation statistics to the metrics", default=False)

    def __post_init__(self) -> None:
        errors = validation_errors(self)
        if errors:
            raise ConfigError("; ".join(errors))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a flat dict (as Ray hands it over); unknown keys are an error."""
        errors = [unknown_key_message(k) for k in values if k not in FIELD_NAMES]
        coerced = {}
        for key, value in values.items():
            if key in FIELD_NAMES:
                try:
                    coerced[key] = coerce(key, value)
                except ConfigError as exc:  # every bad value at once, as validation_errors reports the rules
                    errors.append(str(exc))
        if errors:
            raise ConfigError("; ".join(errors))
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def whole_batches(self) -> bool:
        """Whether training skips an epoch's partial last batch: where it may compile (true or 'auto'),
        as a batch of another shape would compile the model again."""
        return self.compile is not False

    @property
    def ff_width(self) -> int:
        return ff_width(self.d_model, self.d_ff, self.activation)

    @property
    def separator(self) -> str:
        if self.prompt_separator is not None:
            return self.prompt_separator
        return " " if self.tokenizer == "basic_english" else ""


def ff_width(d_model: int, d_ff: Optional[int], activation: str) -> int:
    """The feed-forward width: ``d_ff``, or where it is none 4 * d_model; for swiglu, whose gate
    is a third matrix, 2/3 of that, rounded up to a multiple of 8, for the same weights."""
    if d_ff is not None:
        return d_ff
    return 8 * -(-(8 * d_model) // 24) if activation == "swiglu" else 4 * d_model


def beta2_of(adam_beta2: Optional[float], optimizer: str) -> float:
    """Adam's second-moment decay: ``adam_beta2``, or where it is none 0.999 (0.98 for noam, as the paper's)."""
    if adam_beta2 is not None:
        return adam_beta2
    return 0.98 if optimizer == "noam" else 0.999


FIELDS = {f.name: f for f in fields(TrainConfig)}
FIELD_NAMES = tuple(FIELDS)
_HINTS = get_type_hints(TrainConfig)


def missing_compiler() -> Optional[str]:
    """The C++ compiler ``compile: true`` needs, where it is not installed here; None where it is.

    torch.compile's inductor builds its kernels with ``$CXX``, else g++ (clang++ on macOS, cl on
    Windows), and finds it on PATH as this does: without it every compiled step fails.
    """
    default = "cl" if sys.platform == "win32" else "clang++" if sys.platform == "darwin" else "g++"
    compiler = os.environ.get("CXX") or default
    return None if shutil.which(compiler) else compiler


def compiler_message(compiler: str, turn_off: str = "set compile: false") -> str:
    return (
        f"compile: true needs a C++ compiler for torch.compile, but {compiler!r} (CXX, else its default) is not "
        f"installed here; install one (e.g. g++), point CXX at it, or {turn_off}"
    )


def field_type(name: str) -> tuple[type, bool]:
    """The base type of a field and whether ``None`` is allowed (``compile``'s is bool, which also takes 'auto')."""
    hint = _HINTS[name]
    if get_origin(hint) is Union:
        args = get_args(hint)
        return args[0], type(None) in args
    return hint, False


# Knobs that take true, false or 'auto'; their parquet column holds 'true', 'false' or 'auto'.
AUTO_SWITCHES = ("compile",)


def field_doc(name: str) -> str:
    return FIELDS[name].metadata.get("doc", "")


# What other trainers (nanoGPT, Hugging Face, labml) call a knob, for the did-you-mean of an unknown key.
KNOWN_AS = {
    "learning_rate": "lr",
    "n_embd": "d_model",
    "hidden_size": "d_model",
    "n_embed": "d_model",
    "n_layer": "n_layers",
    "num_layers": "n_layers",
    "num_hidden_layers": "n_layers",
    "n_head": "n_heads",
    "num_heads": "n_heads",
    "num_attention_heads": "n_heads",
    "block_size": "seq_len",
    "context_length": "seq_len",
    "max_seq_len": "seq_len",
    "grad_clip": "grad_norm_clip",
    "max_grad_norm": "grad_norm_clip",
    "clip_grad_norm": "grad_norm_clip",
    "intermediate_size": "d_ff",
    "warmup_steps": "warmup",
    "warmup_iters": "warmup",
    "beta2": "adam_beta2",
    "adam_beta_2": "adam_beta2",
    "position_embedding_type": "position_encoding",
    "positional_encoding": "position_encoding",
    "hidden_act": "activation",
    "activation_function": "activation",
    "hidden_activation": "activation",
}


def unknown_key_message(key: str) -> str:
    close = [KNOWN_AS[key]] if key in KNOWN_AS else difflib.get_close_matches(key, FIELD_NAMES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else " (the keys: docs/configuration.md)"
    return f"unknown key '{key}'{hint}"


def coerce(name: str, value: Any) -> Any:
    """Convert a value from text, YAML or Ray into the field's type; raise ConfigError if it cannot be."""
    kind, optional = field_type(name)
    # 'none'/'null' means None for every optional field, text ones included (--prompt_separator none);
    # only a text field that cannot be None (a prompt) keeps it as text.
    if value is None or (
        isinstance(value, str) and value.lower() in ("none", "null") and (optional or kind is not str)
    ):
        if optional:
            return None
        raise ConfigError(
            f"{name} must be {'an' if kind.__name__[0] in 'aeiou' else 'a'} {kind.__name__}, but got None"
        )
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars from a sampler
        value = value.item()
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if name in AUTO_SWITCHES:
            if isinstance(value, str) and value.lower() == "auto":
                return "auto"
            raise ConfigError(f"{name} must be true, false or 'auto', but got {value!r}")
        raise ConfigError(f"{name} must be true or false, but got {value!r}")
    if kind is int:
        try:
            return as_int(value)
        except ValueError:
            rule = "an integer from -2**63 to 2**63 - 1" if is_whole(value) else "an integer"  # (torch's, Optuna's)
            raise ConfigError(f"{name} must be {rule}, but got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, but got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, but got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be text, but got {value!r}")
    return value


def validation_errors(config: TrainConfig) -> list[str]:
    """Every broken rule of a config, each naming the field, the rule and the value received."""
    errors: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    for name in FIELD_NAMES:
        value = getattr(config, name)
        kind, optional = field_type(name)
        if value is None and optional:
            continue
        ok_type = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if name in AUTO_SWITCHES and value == "auto":
            ok_type = True
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok_type = True
        if not ok_type:
            errors.append(f"{name} must be of type {kind.__name__}, but got {value!r}")
    if errors:
        return errors

    def one_of(name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(config, name)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            errors.append(f"{name} must be one of {', '.join(allowed)}, but got {value!r}{hint}")

    for name in ("seq_len", "batch_size", "d_model", "n_layers", "n_heads", "epochs"):
        check(getattr(config, name) > 0, f"{name} > 0 must hold, but got {name}={getattr(config, name)}")
    for name in ("d_ff", "batches_per_epoch"):
        value = getattr(config, name)
        check(value is None or value > 0, f"{name} > 0 must hold (or none), but got {name}={value}")
    check(0 <= config.seed < 2**63, f"0 <= seed < 2**63 must hold, but got seed={config.seed}")
    check(config.sample_tokens >= 0, f"sample_tokens >= 0 must hold, but got sample_tokens={config.sample_tokens}")
    check(config.warmup >= 0, f"warmup >= 0 must hold, but got warmup={config.warmup}")
    if config.d_model > 0 and config.n_heads > 0:
        check(
            config.d_model % config.n_heads == 0,
            f"n_heads must divide d_model, but got d_model={config.d_model}, n_heads={config.n_heads}",
        )
        check(
            config.position_encoding != "rope"
            or config.d_model % config.n_heads
            or (config.d_model // config.n_heads) % 2 == 0,
            f"position_encoding 'rope' turns pairs of a head's dimensions, so d_model / n_heads must be even, "
            f"but got d_model={config.d_model}, n_heads={config.n_heads}",
        )
    check(math.isfinite(config.lr) and config.lr > 0, f"lr > 0 must hold (finite), but got lr={config.lr}")
    check(
        math.isfinite(config.weight_decay) and config.weight_decay >= 0,
        f"weight_decay >= 0 must hold, but got weight_decay={config.weight_decay}",
    )
    check(
        math.isfinite(config.grad_norm_clip) and config.grad_norm_clip > 0,
        f"grad_norm_clip > 0 must hold, but got grad_norm_clip={config.grad_norm_clip}",
    )
    check(
        math.isfinite(config.lr_min_ratio) and 0.0 <= config.lr_min_ratio <= 1.0,
        f"0 <= lr_min_ratio <= 1 must hold, but got lr_min_ratio={config.lr_min_ratio}",
    )
    check(
        config.adam_beta2 is None or (math.isfinite(config.adam_beta2) and 0.0 <= config.adam_beta2 < 1.0),
        f"0 <= adam_beta2 < 1 must hold (or none), but got adam_beta2={config.adam_beta2}",
    )
    check(0.0 <= config.dropout < 1.0, f"0 <= dropout < 1 must hold, but got dropout={config.dropout}")
    check(bool(config.dataset.strip()), "dataset must name 'tiny_shakespeare' or a text file, but got ''")
    one_of("optimizer", OPTIMIZERS)
    one_of("tokenizer", TOKENIZERS)
    one_of("train_loader", LOADERS)
    one_of("valid_loader", LOADERS)
    one_of("device", DEVICES)
    one_of("precision", PRECISIONS)
    one_of("lr_schedule", LR_SCHEDULES)
    one_of("position_encoding", POSITION_ENCODINGS)
    one_of("activation", ACTIVATIONS)
    one_of("compile_mode", COMPILE_MODES)
    check(
        config.compile or config.compile_mode == "default",
        f"compile_mode {config.compile_mode!r} needs compile: true or 'auto', but got compile={config.compile}",
    )
    if config.optimizer == "noam":
        check(config.warmup > 0, f"optimizer 'noam' needs warmup > 0, but got warmup={config.warmup}")
        check(
            config.lr_schedule == "constant",
            f"optimizer 'noam' is its own schedule, so lr_schedule must be 'constant', but got {config.lr_schedule!r}",
        )
    return errors


def add_config_arguments(parser: Any) -> None:
    """Add one ``--<field>`` option per TrainConfig field to an argparse parser, docs as help; a field with an
    underscore is also ``--<field-with-hyphens>``, as the command's other options are spelled.

    Values stay text here and are converted by ``coerce``, so the CLI and a YAML file share
    one set of rules and one set of error messages.
    """
    group = parser.add_argument_group("training configuration (TrainConfig)")
    for name in FIELD_NAMES:
        default = FIELDS[name].default
        hyphens = name.replace("_", "-")
        group.add_argument(
            f"--{name}",
            *([f"--{hyphens}"] if hyphens != name else []),
            dest=name,
            default=None,
            metavar=field_type(name)[0].__name__.upper(),
            help=f"{field_doc(name)} (default: {default!r})",
        )


def config_from_arguments(args: Any) -> TrainConfig:
    """The TrainConfig from parsed ``add_config_arguments`` options (unset options keep defaults)."""
    values = {name: getattr(args, name) for name in FIELD_NAMES if getattr(args, name) is not None}
    return TrainConfig.from_dict(values)


def reference_table() -> str:
    """The configuration reference as a Markdown table, one row per TrainConfig field."""
    rows = ["| knob | type | default | what it does |", "| --- | --- | --- | --- |"]
    for name in FIELD_NAMES:
        kind, optional = field_type(name)
        type_name = kind.__name__ + (" or none" if optional else "") + (" or 'auto'" if name in AUTO_SWITCHES else "")
        default = FIELDS[name].default
        if default is None:
            shown = "none"
        elif isinstance(default, bool):
            shown = str(default).lower()  # as YAML and --set write it
        else:
            shown = repr(default) if isinstance(default, str) else str(default)
        rows.append(f"| `{name}` | {type_name} | `{shown}` | {field_doc(name)} |")
    return "\n".join(rows)


REFERENCE_COMMAND = "python -m artune.config --markdown > docs/configuration.md"


def reference_markdown() -> str:
    """docs/configuration.md, whole: the table with the lines that say what it is and how it is made."""
    return "\n".join(
        [
            "# Configuration reference",
            "",
            "Every knob of `TrainConfig` (`artune/config.py`), its type, default and doc; the doc is also the",
            "knob's `--help` line in `python -m artune.train`. The same name is the YAML key, the `--set`/`--flag`",
            "name, the Optuna parameter and the parquet column (`epochs` alone is a search setting: `search: epochs`",
            "or `--epochs`, not `fixed:` or `--set`). A search-space file's `fixed:` values replace these defaults;",
            "see [search_spaces.md](search_spaces.md) and [usage.md](usage.md#what-a-trial-trains).",
            "",
            f"Generated from the field docs, not edited by hand: `{REFERENCE_COMMAND}`.",
            "`tests/test_docs.py` fails when this file and the code differ.",
            "",
            "<!-- config-reference:start -->",
            reference_table(),
            "<!-- config-reference:end -->",
            "",
        ]
    )


if __name__ == "__main__":
    if sys.argv[1:] in (["-h"], ["--help"]):
        print("python -m artune.config [--markdown]: the configuration reference, as a table or as its docs page")
    elif sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(reference_markdown())
    elif sys.argv[1:]:
        given = " ".join(sys.argv[1:])
        print(f"error: python -m artune.config takes --markdown or nothing, but got {given}", file=sys.stderr)
        sys.exit(2)
    else:
        print(reference_table())
