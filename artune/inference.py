"""A trained model back in hand: a search's best checkpoint (or a trial's), or an exported directory, as a
:class:`LoadedModel` that writes text.

Never imports Ray: a model loads from the files a search left, with torch and artune alone. The search's
tables say which trial and epoch were best (:class:`artune.results.SearchResults` picks them); this module
finds that epoch's checkpoint among the ones Ray kept, and reads an export written by :func:`write_export`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

import artune.train.checkpoint as checkpoint
from artune import __version__, plural
from artune.config import ConfigError, TrainConfig
from artune.errors import CheckpointError, UnknownTokenError, UserError
from artune.files import file_sha256, sync
from artune.humanize import first_line
from artune.models import GPT, ModelConfig
from artune.tokenizers import Vocabulary, get_tokenizer
from artune.train.checkpoint import shape_errors
from artune.train.trainer import model_config

if TYPE_CHECKING:
    from artune.results import SearchResults

EXPORT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
CARD_FILE = "README.md"


@dataclass(frozen=True)
class Tokenizer:
    """Text to ids and back: the corpus's tokenizer (by name) and its vocabulary."""

    name: str
    vocabulary: Vocabulary
    separator: str  # joins decoded tokens: '' for character, ' ' for basic_english

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``'s tokens; a token the corpus never held is an UnknownTokenError."""
        return self.vocabulary.encode(get_tokenizer(self.name)(text))

    def decode(self, ids: list[int]) -> str:
        return self.vocabulary.decode(ids, self.separator)


@dataclass
class LoadedModel:
    """A trained model ready to write: ``model`` (the ``nn.Module``, in eval mode), ``tokenizer``, ``config``
    (the TrainConfig it trained with) and ``origin`` (the search, trial, epoch and metric it came from)."""

    model: GPT
    tokenizer: Tokenizer
    config: TrainConfig
    origin: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompt: Optional[str] = None,
        tokens: int = 200,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> str:
        """The prompt (default: the config's) and ``tokens`` more, joined as the trainer's sample is.

        ``temperature`` 0 is greedy decoding, the trainer's own sample; above 0 each token is drawn from
        the softmax of the logits over ``temperature``, among the ``top_k`` likeliest where given, with
        ``seed`` seeding the draws (none: a fresh draw each call). Runs in fp32, whatever the training's precision.
        """
        return "".join(self.stream(prompt, tokens, temperature, top_k, seed))

    def stream(
        self,
        prompt: Optional[str] = None,
        tokens: int = 200,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> Iterator[str]:
        """``generate``'s text as it comes: the prompt, then each token with the tokenizer's separator before it
        (a long sample shows from its first token; one token costs a forward pass of up to seq_len of context).
        The inputs are checked before the prompt is given."""
        prompt = self.config.prompt if prompt is None else prompt
        if tokens < 0:
            raise UserError(f"tokens >= 0 must hold, but got tokens={tokens}")
        if not temperature >= 0:  # NaN too
            raise UserError(f"temperature >= 0 must hold, but got temperature={temperature}")
        if top_k is not None and top_k < 1:
            raise UserError(f"top_k >= 1 must hold (or none), but got top_k={top_k}")
        try:
            ids = self.tokenizer.encode(prompt)
        except UnknownTokenError as exc:
            raise UnknownTokenError(f"prompt {prompt!r}: {exc}") from None
        if tokens and not ids:
            raise UserError(f"the prompt must give at least one {self.tokenizer.name} token, but got {prompt!r}")
        return self._pieces(prompt, ids, tokens, temperature, top_k, seed)

    @torch.no_grad()
    def _pieces(
        self, prompt: str, ids: list[int], tokens: int, temperature: float, top_k: Optional[int], seed: Optional[int]
    ) -> Iterator[str]:
        yield prompt
        self.model.eval()
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        generator = torch.Generator(self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        for _ in range(tokens):
            logits = self.model(idx[:, -self.model.cfg.seq_len :])[:, -1]  # (1, V): the context its positions hold
            if temperature == 0:  # greedy: the trainer's sample (GPT.generate), token for token
                token = logits.argmax(dim=-1, keepdim=True)
            else:
                # shifted to a top of 0 and divided in float64: a tiny temperature sends the rest towards -inf (a
                # greedy draw), where the float32 division overflowed to inf (or took the temperature for 0)
                logits = logits.double()
                logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)  # (1, 1)
            idx = torch.cat([idx, token], dim=1)
            yield self.tokenizer.separator + self.tokenizer.decode([int(token)])


def check_device(device: str | torch.device, label: str = "device") -> torch.device:
    """``device`` as torch's, where a model can load: a CPU, or a CUDA GPU torch sees (``label`` names it in the
    one-line refusal: torch's own is an AssertionError, or an error deep in loading)."""
    name = str(device)
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda") or (parsed.type == "cpu" and parsed.index is not None):
        # mps, xpu, meta...: torch names them, but artune's trainer and models run on a CPU or a CUDA GPU
        raise UserError(f"{label} must be cpu, cuda or cuda:N, but got {name!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{label} {name}: torch sees no CUDA device here")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"{label} {name}: torch sees {count} CUDA device(s) here, cuda:0 to cuda:{count - 1}")
    return parsed


def from_state(state: Any, path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The model an artune checkpoint (as :func:`artune.train.checkpoint.read` gives it) holds."""
    check_device(device)
    if not isinstance(state, dict) or not {"config", "vocabulary", "model"} <= set(state):
        raise CheckpointError(f"{path}: not an artune checkpoint (no config, vocabulary and model in it)")
    if state.get("format") != checkpoint.CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {state.get('format')!r} is not this artune's ({checkpoint.CHECKPOINT_FORMAT})"
        )
    try:
        config = TrainConfig.from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its settings do not load ({exc})") from None
    vocabulary = Vocabulary(state["vocabulary"])
    with checkpoint.refusals_name(path):
        model = GPT(model_config(config, len(vocabulary)))
        model.load_state_dict(state["model"])
    return LoadedModel(model.to(device).eval(), Tokenizer(config.tokenizer, vocabulary, config.separator), config)


def from_search(
    results: SearchResults, trial_id: Optional[str] = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """The best trial's model at its best epoch (or trial ``trial_id``'s), from ``results``' checkpoints."""
    for attempt in range(TABLE_TRIES):
        row = results.trial(trial_id)
        epochs = results.trial_epochs(str(row["trial_id"]))  # epoch -> the metric's value, best first
        try:
            path, state = best_checkpoint(results.path, results.runs, str(row["trial_id"]), list(epochs))
            break
        except TablesBehind:  # a running search: its tables' next write lists the epochs Ray kept
            if attempt + 1 == TABLE_TRIES:
                raise
            time.sleep(0.5)
            results = results.reload()
    trial_id = str(row["trial_id"])
    loaded = from_state(state, path, device)
    epoch = int(state["epoch"])
    loaded.origin = {
        "search": results.name,
        "search_path": str(results.path.resolve()),
        "trial_id": trial_id,
        "epoch": epoch,
        "epochs_completed": int(row["epochs_completed"]),
        "metric": results.epoch_metric(),
        "mode": results.mode,
        "value": epochs[epoch],
        "corpus": {**results.manifest.get("corpus", {}), "sha256": state.get("corpus_sha256")},
        "checkpoint": str(path.resolve()),  # as search_path: an export names it wherever it is read
    }
    return loaded


def best_checkpoint(directory: Path, runs: list[str], trial_id: str, ranked: list[int]) -> tuple[Path, Any]:
    """The checkpoint of the best of a trial's epochs ``ranked`` (best first) that Ray kept, and what it holds.

    The trial's directory is ``<run>/<trial_id>`` under one of the search's runs (a resume continues a run,
    an --extend adds one). Ray names checkpoints by their order, not their epoch, so each is read for the
    epoch it holds. A kept checkpoint that does not read is an error where it may be the best one, that is unless
    one that reads holds the trial's best epoch.
    """
    trial_dirs = [directory / run / trial_id for run in runs if (directory / run / trial_id).is_dir()]
    found = sorted(p for d in trial_dirs for p in d.glob(f"checkpoint_*/{checkpoint.CHECKPOINT_FILE}"))
    if not found:
        where = ", ".join(str(directory / run / trial_id) for run in runs)
        raise CheckpointError(
            f"trial {trial_id} has no checkpoint in {where} (was is_save_models false, or the directory removed?)"
        )
    by_epoch: dict[int, tuple[Path, Any]] = {}
    unreadable: list[CheckpointError] = []
    for path in found:
        try:
            path, state = checkpoint.read(path, torch.device("cpu"))
        except CheckpointError as exc:
            if path.exists():
                unreadable.append(exc)
            continue  # one Ray deleted since it was listed (a running search keeps a trial's 2 best): skipped
        if not isinstance(state, dict) or "epoch" not in state:
            raise CheckpointError(f"{path}: not an artune checkpoint (no epoch in it)")
        by_epoch[int(state["epoch"])] = (path, state)
    if ranked and ranked[0] in by_epoch:
        return by_epoch[ranked[0]]
    if unreadable:
        raise unreadable[0]
    for epoch in ranked:
        if epoch in by_epoch:
            return by_epoch[epoch]
    if ranked and max(by_epoch, default=0) > max(ranked):
        # Ray keeps a trial's 2 best checkpoints, and a running search's tables lag its trials by a write (2 s)
        raise TablesBehind(
            f"trial {trial_id}: none of the epochs its tables list {sorted(ranked)} has a checkpoint, and the ones "
            f"Ray kept are newer (epochs {sorted(by_epoch)}): its search is running and has not written them to its "
            "tables yet (or was killed before it did: --resume writes them); try again"
        )
    raise CheckpointError(
        f"trial {trial_id}: none of its finished epochs {sorted(ranked)} has a checkpoint "
        f"(kept: epochs {sorted(by_epoch)})"
    )


class TablesBehind(CheckpointError):
    """The checkpoints Ray kept of a trial are newer than every epoch its search's tables list."""


TABLE_TRIES = 8  # 0.5 s apart: a running search rewrites its tables every 2 s


# --- an exported model: weights, settings, vocabulary and a card, loadable without the search


def is_export(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def write_export(loaded: LoadedModel, out: str | os.PathLike) -> Path:
    """Write ``loaded`` to the directory ``out`` (new, or empty): the whole directory appears at once, or none."""
    from safetensors.torch import save_model

    given, out = out, Path(out).absolute()  # "." has no name to stage beside
    if out.exists() and not out.is_dir():
        raise UserError(f"{given}: is a file, not a directory; choose another OUT")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{given}: exists and is not an empty directory; choose another OUT, or remove it first")
    for parent in out.parents:  # a file where a directory is to be: say which, not "File exists"
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{given}: {parent} is a file, not a directory; choose another OUT")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        try:
            save_model(loaded.model, str(staging / WEIGHTS_FILE), metadata={"format": "artune", "artune": __version__})
        except Exception as exc:  # noqa: BLE001 - safetensors' own error for a write that failed (a full disk)
            if isinstance(exc, OSError):
                raise
            raise OSError(first_line(exc)) from None
        settings = {
            "format": EXPORT_FORMAT,
            "artune": __version__,
            "train_config": loaded.config.to_dict(),
            "model": dataclasses.asdict(loaded.model.cfg),
            "origin": loaded.origin,
            # safetensors checks its header and sizes, not its numbers: a flipped bit would load as another weight
            "weights_sha256": file_sha256(staging / WEIGHTS_FILE),
        }
        (staging / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        vocab = {"tokenizer": loaded.tokenizer.name, "separator": loaded.tokenizer.separator}
        (staging / VOCAB_FILE).write_text(json.dumps({**vocab, "tokens": loaded.tokenizer.vocabulary.itos}) + "\n")
        (staging / CARD_FILE).write_text(model_card(loaded), encoding="utf-8")  # a prompt or sample in any script
        # safetensors writes its file for its owner alone: readable as the export's other files are (the umask's)
        os.chmod(staging / WEIGHTS_FILE, (staging / CONFIG_FILE).stat().st_mode & 0o777)
        for path in (*staging.iterdir(), staging):  # on the disk before the rename: whole after a crash too
            sync(path)
        os.replace(staging, out)  # onto an empty directory too
        sync(out.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def from_export(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """The model :func:`write_export` wrote to ``directory``."""
    from safetensors.torch import load_model

    check_device(device)
    directory = Path(directory)
    settings, vocab = _read_json(directory / CONFIG_FILE), _read_json(directory / VOCAB_FILE)
    try:
        if settings.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"export format {settings.get('format')!r} is not this artune's ({EXPORT_FORMAT})")
        config = TrainConfig.from_dict(settings["train_config"])
        model = GPT(ModelConfig(**settings["model"]))
        origin = settings.get("origin", {})
        if not isinstance(origin, dict):
            raise TypeError(f"origin must be an object, but got {type(origin).__name__}")
    except (KeyError, TypeError, ValueError, ArithmeticError, RuntimeError, CheckpointError) as exc:
        what = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{directory / CONFIG_FILE}: not an artune export ({what})") from None
    tokenizer = _export_tokenizer(vocab, model.cfg.vocab_size, directory / VOCAB_FILE)
    path = directory / WEIGHTS_FILE
    _check_weights(path, settings.get("weights_sha256"), directory / CONFIG_FILE)
    try:
        load_model(model, path)
    except Exception as exc:  # noqa: BLE001 (safetensors' own errors, a truncated file, another shape)
        raise CheckpointError(f"{path}: cannot load the weights ({shape_errors(exc)})") from None
    return LoadedModel(model.to(device).eval(), tokenizer, config, dict(origin))


def _check_weights(path: Path, recorded: Any, config: Path) -> None:
    """The weights are the bytes the export wrote (an export from before artune recorded their sha256 loads
    unchecked)."""
    if recorded is None:
        return
    if not isinstance(recorded, str):
        raise CheckpointError(f"{config}: weights_sha256 must be a string, but got {recorded!r}")
    try:
        actual = file_sha256(path)
    except OSError:
        return  # missing or unreadable: safetensors' own load says so, in the line a damaged file gets
    if actual != recorded:
        raise CheckpointError(
            f"{path}: cannot load the weights (their sha256 is {actual[:12]}..., not the {recorded[:12]}... that "
            f"{CONFIG_FILE} records: the file changed after the export; damaged, or replaced)"
        )


def _export_tokenizer(vocab: dict[str, Any], vocab_size: int, path: Path) -> Tokenizer:
    """The tokenizer ``vocab.json`` describes, checked against the model: a token list of another length decodes
    every id as another token, and prints fluent-looking nonsense."""
    tokens, name, separator = vocab.get("tokens"), vocab.get("tokenizer"), vocab.get("separator")
    if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
        raise CheckpointError(f"{path}: not an artune export's vocabulary (tokens must be a list of strings)")
    if len(tokens) != vocab_size:
        raise CheckpointError(f"{path}: holds {len(tokens)} tokens, but the model's vocabulary has {vocab_size}")
    try:
        get_tokenizer(name)
    except (TypeError, ValueError) as exc:  # TypeError: a name that is no string (a list, unhashable)
        raise CheckpointError(f"{path}: {exc}") from None
    if not isinstance(separator, str):
        raise CheckpointError(f"{path}: separator must be a string, but got {separator!r}")
    try:
        vocabulary = Vocabulary(tokens)
    except ValueError as exc:  # a token listed twice
        raise CheckpointError(f"{path}: {exc}") from None
    return Tokenizer(name, vocabulary, separator)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        files = f"{CONFIG_FILE}, {VOCAB_FILE} and {WEIGHTS_FILE}"
        raise CheckpointError(f"{path}: not found; an export holds {files}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not an artune export (holds a {type(data).__name__})")
    return data


def model_card(loaded: LoadedModel) -> str:
    """The export's README.md: what the model is, what it was trained on, how good, where from, how to use."""
    o, c, m = loaded.origin, loaded.config, loaded.model.cfg
    corpus = o.get("corpus", {})
    knobs = ", ".join(f"{k}={v!r}" for k, v in c.to_dict().items())
    return "\n".join(
        [
            f"# {o.get('search', 'artune model')} / trial {o.get('trial_id', '?')}",
            "",
            f"A GPT-style language model trained by artune {__version__}: {plural(m.n_layers, 'layer')}, "
            f"d_model {m.d_model}, {plural(m.n_heads, 'head')}, context {m.seq_len} tokens, "
            f"{loaded.model.num_parameters():,} parameters, "
            f"{c.tokenizer} tokenizer ({m.vocab_size} tokens).",
            "",
            "| | |",
            "| --- | --- |",
            f"| corpus | `{corpus.get('source', c.dataset)}` |",
            f"| corpus sha256 | `{corpus.get('sha256')}` |",
            f"| {o.get('metric', 'metric')} ({o.get('mode', '')}) | {o.get('value')} |",
            f"| epoch | {o.get('epoch')} (the best of {o.get('epochs_completed')} trained; {c.epochs} planned) |",
            f"| search | `{o.get('search_path', '?')}`, trial `{o.get('trial_id')}` |",
            "",
            "Load it with torch and artune (no Ray):",
            "",
            "```",
            "python -m artune.sample THIS_DIRECTORY --prompt 'ROMEO:' --tokens 200",
            "```",
            "",
            "```python",
            "from artune.inference import from_export",
            "print(from_export('THIS_DIRECTORY').generate('ROMEO:', 200))",
            "```",
            "",
            f"Its settings (TrainConfig): {knobs}.",
            "",
        ]
    )
