"""The best model in hand: loaded from a real smoke search's checkpoints, sampled, exported and loaded without Ray."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from artune.errors import CheckpointError, UserError
from artune.inference import (
    CONFIG_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    best_checkpoint,
    from_export,
    is_export,
    write_export,
)
from artune.results import (
    MANIFEST_FILE,
    TRIALS_FILE,
    TrialRecord,
    load,
    read_records,
    write_json_atomic,
    write_tables,
)
from artune.train import Trainer

REPO = Path(__file__).resolve().parent.parent


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def one_error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.fixture(scope="module")
def search(smoke_search) -> Path:
    result, directory = smoke_search
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture(scope="module")
def best(search) -> dict:
    """The trial with the lowest best_valid_loss in trials.parquet, read without artune."""
    rows = [r for r in pq.read_table(search / TRIALS_FILE).to_pylist() if r["best_valid_loss"] is not None]
    return min(rows, key=lambda r: r["best_valid_loss"])


def test_every_trial_keeps_its_best_epochs_checkpoint(search):
    results = load(search)
    trained = [t for t in results.trials["trial_id"] if results.trial_epochs(t)]
    assert trained
    for trial_id in trained:
        ranked = list(results.trial_epochs(trial_id))
        _, state = best_checkpoint(search, results.manifest["runs"], trial_id, ranked)
        assert state["epoch"] == ranked[0], trial_id


# An lr this high makes the valid loss rise after epoch 2 (seed 0): the best epoch is not the latest.
RISING = """
search: {metric: valid_loss, mode: min, num_samples: 1, resources: {cpu: 1, gpu: 0}, epochs: 4, seed: 0,
         scheduler: none}
fixed: {seq_len: 32, batch_size: 8, batches_per_epoch: 20, n_heads: 2, d_model: 64, n_layers: 2,
        optimizer: adamw, lr: 0.1, sample_tokens: 0, device: cpu}
params: {dropout: {choice: [0.0]}}
"""


def test_a_trial_whose_loss_rises_keeps_its_best_epoch_beside_its_latest(
    tmp_path, shakespeare_path, private_ray_tmpdir
):
    """The smoke search's losses fall every epoch, so its best checkpoints are its latest: this one's are not."""
    space = tmp_path / "rising.yaml"
    space.write_text(RISING)
    result = run("artune.search", space, "--results-dir", tmp_path, "--name", "rising", "--data", shakespeare_path)
    assert result.returncode == 0, result.stderr
    results = load(tmp_path / "rising")
    (trial_id,) = results.trials["trial_id"]
    best_epoch = next(iter(results.trial_epochs(trial_id)))
    assert best_epoch < 4, results.epochs  # else this test shows nothing: the space no longer makes the loss rise
    kept = [
        torch.load(p, weights_only=True, mmap=True)["epoch"]
        for p in (tmp_path / "rising" / "tune" / trial_id).glob("checkpoint_*/checkpoint.pt")
    ]
    # the best (and the second best), and the latest that a resume continues; not every epoch
    assert best_epoch in kept and 4 in kept and len(kept) <= 3, kept
    loaded = results.best_model()
    assert loaded.origin["epoch"] == best_epoch
    trainer = Trainer(loaded.config, data_dir=shakespeare_path.parent)
    trainer.model.load_state_dict(loaded.model.state_dict())
    assert trainer.validate()[0] == pytest.approx(results.trial_epochs(trial_id)[best_epoch], abs=1e-4)


def test_sample_prints_the_prompt_continued_by_the_best_trials_model(search, best):
    result = run("artune.sample", search, "--prompt", "ROMEO:", "--tokens", 40)
    assert result.returncode == 0, result.stderr
    text = result.stdout.removesuffix("\n")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40  # character tokens
    assert f"trial {best['trial_id']}," in result.stderr


def test_the_loaded_model_gives_its_valid_loss_again_and_the_trainers_sample(search, best, shakespeare_path):
    loaded = load(search).best_model()
    assert loaded.origin["trial_id"] == best["trial_id"]
    trainer = Trainer(loaded.config, data_dir=shakespeare_path.parent)
    trainer.model.load_state_dict(loaded.model.state_dict())
    valid_loss, _ = trainer.validate()  # the trainer's own evaluation
    assert valid_loss == pytest.approx(best["best_valid_loss"], abs=1e-4)
    # greedy by default, as the trainer's sample after that epoch
    epochs = pq.read_table(search / "epochs.parquet").to_pylist()
    (row,) = [r for r in epochs if r["trial_id"] == best["trial_id"] and r["epoch"] == loaded.origin["epoch"]]
    assert loaded.generate(loaded.config.prompt, loaded.config.sample_tokens) == row["sample"]


def test_a_sample_streams_the_prompt_then_one_piece_a_token(search):
    """artune.sample printed nothing until the whole sample was made (a review: --tokens 100000 showed nothing in 9
    minutes): the text now comes a token at a time, the same text, greedy as the model's own generate."""
    loaded = load(search).best_model()
    for temperature, seed in ((0.0, None), (1.0, 3)):
        pieces = list(loaded.stream("ROMEO:", 12, temperature, None, seed))
        assert pieces[0] == "ROMEO:" and len(pieces) == 13 and all(len(p) == 1 for p in pieces[1:]), pieces
        assert "".join(pieces) == loaded.generate("ROMEO:", 12, temperature, None, seed)
    ids = torch.tensor([loaded.tokenizer.encode("ROMEO:")])
    greedy = loaded.model.generate(ids, 12)[0, ids.shape[1] :].tolist()
    assert loaded.generate("ROMEO:", 12) == "ROMEO:" + loaded.tokenizer.decode(greedy)
    with pytest.raises(UserError):  # the inputs are checked as the stream is made, before any piece
        loaded.stream("ROMEO:", -1)
    result = run("artune.sample", search, "--tokens", 12, "--prompt", "ROMEO:")
    assert result.returncode == 0 and result.stdout == loaded.generate("ROMEO:", 12) + "\n", result.stdout


def test_a_ctrl_c_in_the_middle_of_a_sample_ends_its_line(search):
    """A Ctrl-C in the middle of a long sample exited 130 with the text's last line unended: the shell's prompt
    came after the text's last character."""
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "artune.sample", str(search), "--tokens", "1000000", "--prompt", "ROMEO:"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        shown = process.stdout.read(20)  # the prompt, then the text as it comes
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=120)  # a hang guard
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in err, err
    assert shown.startswith("ROMEO:") and rest.endswith("\n"), (shown, rest[-200:])


def test_a_named_trial_loads_its_own_model(search, best):
    results = load(search)
    other = next(t for t in results.trials["trial_id"] if t != best["trial_id"] and results.trial_epochs(t))
    loaded = results.model(other)
    assert loaded.origin["trial_id"] == other and loaded.config == results.config(other)
    result = run("artune.sample", search, "--trial", other, "--tokens", 5)
    assert result.returncode == 0 and f"trial {other}," in result.stderr, result.stderr


def test_drawn_text_is_seeded_and_kept_to_the_top_k(search):
    loaded = load(search).best_model()
    first = loaded.generate("ROMEO:", 30, temperature=1.0, top_k=3, seed=7)
    assert first == loaded.generate("ROMEO:", 30, temperature=1.0, top_k=3, seed=7)
    assert loaded.generate("ROMEO:", 30, temperature=1.0, top_k=1, seed=7) == loaded.generate("ROMEO:", 30)
    # a temperature so small that logits over it overflow: a greedy draw (it was a RuntimeError from multinomial)
    assert loaded.generate("ROMEO:", 30, temperature=1e-300, seed=7) == loaded.generate("ROMEO:", 30)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_export_samples_the_same_text_and_loads_without_ray(search, tmp_path):
    out = tmp_path / "model"
    exported = run("artune.export", search, out)
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE]
    # safetensors wrote the weights for their owner alone (0600): a serving process of another user could not read
    assert {(out / name).stat().st_mode & 0o777 for name in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE)} == {
        0o666 & ~current_umask()
    }
    assert json.loads((out / VOCAB_FILE).read_text())["tokenizer"] == "character"
    card = (out / "README.md").read_text()
    corpus = json.loads((search / MANIFEST_FILE).read_text())["corpus"]
    assert corpus["sha256"] in card and "valid_loss" in card and str(search.resolve()) in card
    from_search = run("artune.sample", search, "--prompt", "ROMEO:", "--tokens", 40)
    from_out = run("artune.sample", out, "--prompt", "ROMEO:", "--tokens", 40)
    assert from_out.returncode == 0, from_out.stderr
    assert from_out.stdout == from_search.stdout
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from artune.inference import from_export; "
            f"text = from_export({str(out)!r}).generate('ROMEO:', 40); "
            "assert 'ray' not in sys.modules, 'ray imported'; print(text)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout == from_search.stdout


def test_a_search_loads_in_a_process_without_ray(search):
    code = (
        "import sys; from artune.results import load; "
        f"print(load({str(search)!r}).best_model().generate('ROMEO:', 10)); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_a_trial_of_a_later_run_is_found_in_that_runs_directory(search, best, tmp_path):
    """An --extend's trials live under tune-2/, tune-3/...: the manifest's runs say where to look."""
    copy = tmp_path / "extended"
    shutil.copytree(search, copy, ignore=shutil.ignore_patterns(".lock"))
    (copy / "tune-2").mkdir()
    shutil.move(copy / "tune" / best["trial_id"], copy / "tune-2" / best["trial_id"])
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    write_json_atomic({**manifest, "runs": ["tune", "tune-2"]}, copy / MANIFEST_FILE)
    loaded = load(copy).best_model()
    assert Path(loaded.origin["checkpoint"]).parent.parent == copy / "tune-2" / best["trial_id"]


# --- bad inputs: one line, exit 2, nothing written


def test_an_unknown_trial_is_one_line(search, tmp_path):
    line = one_error_line(run("artune.sample", search, "--trial", "nosuch"))
    assert "no trial 'nosuch' in" in line and TRIALS_FILE in line
    one_error_line(run("artune.export", search, tmp_path / "out", "--trial", "nosuch"))
    assert not (tmp_path / "out").exists()
    one_error_line(run("artune.train", "--from", search, "--trial", "nosuch"))


def test_a_prompt_outside_the_vocabulary_is_one_line(search):
    """The model's origin line was printed before the prompt was encoded: two lines on stderr (a review)."""
    line = one_error_line(run("artune.sample", search, "--prompt", "\u20ac"))
    assert "'\u20ac'" in line or "\u20ac" in line, line


def test_a_search_with_no_finished_epoch_is_one_line(tmp_path):
    directory = tmp_path / "empty"
    directory.mkdir()
    write_tables(directory, [TrialRecord("a1", {}, status="error", error="boom"), TrialRecord("a2", {})])
    write_json_atomic(
        {"name": "empty", "metric": "valid_loss", "mode": "min", "runs": ["tune"]}, directory / "manifest.json"
    )
    line = one_error_line(run("artune.sample", directory))
    assert "no trial finished an epoch" in line
    one_error_line(run("artune.export", directory, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert "finished no epoch" in one_error_line(run("artune.sample", directory, "--trial", "a1"))


def test_a_device_this_machine_lacks_is_one_line_naming_it(search):
    """cuda:N past the GPUs torch sees (on a machine with none: any CUDA device), and a name torch does not know."""
    missing = f"cuda:{torch.cuda.device_count()}"
    line = one_error_line(run("artune.sample", search, "--device", missing))
    assert line.startswith(f"error: --device {missing}: torch sees ") and "CUDA device" in line, line
    for name in ("gpu", "mps", "meta", "cpu:3"):  # one torch does not know, and ones it knows that artune does not run
        assert "--device must be cpu, cuda or cuda:N" in one_error_line(run("artune.sample", search, "--device", name))


def test_the_notebook_api_refuses_a_device_or_trial_it_lacks_as_the_cli_does(search):
    """best_model(device="cuda") on a machine without CUDA was torch's bare AssertionError ("Torch not compiled with
    CUDA enabled"); trial_epochs of a trial the search lacks was {} where model() names the search's trials."""
    from artune.errors import ResultsError, UserError

    results = load(search)
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(UserError, match=f"^device {missing}: torch sees .*CUDA device"):
        results.best_model(device=missing)
    with pytest.raises(UserError, match="^device must be cpu, cuda or cuda:N, but got 'meta'"):
        results.best_model(device="meta")
    with pytest.raises(ResultsError, match=f"^no trial 'nope' in {search / TRIALS_FILE} \\(its trials: "):
        results.trial_epochs("nope")


def test_a_path_that_is_neither_a_search_nor_an_export_is_one_line_saying_where_it_looked(tmp_path):
    for name in ("nosuch", "run:1"):  # a colon in the path, as in the message's own
        line = one_error_line(run("artune.sample", tmp_path / name))
        assert line == (
            f"error: {tmp_path / name}: neither a search (no trials.parquet in {tmp_path / name}) "
            "nor an exported model (python -m artune.export writes one)"
        )


def test_top_k_or_seed_without_a_temperature_is_one_line_not_silently_greedy(search):
    line = one_error_line(run("artune.sample", search, "--top-k", "5", "--seed", "1"))
    assert line == "error: --top-k and --seed shape the draws of --temperature: give --temperature T > 0 too"
    line = one_error_line(run("artune.sample", search, "--seed", "1"))
    assert line == "error: --seed shapes the draws of --temperature: give --temperature T > 0 too"


def test_a_seed_outside_64_bits_is_one_line(search):
    """torch's generator takes a seed of 64 bits: 2**64 was a traceback (an overflow) after the model loaded."""
    for seed in (str(2**64), str(-(2**63) - 1)):
        line = one_error_line(run("artune.sample", search, "--temperature", "1", "--seed", seed))
        assert line == f"error: --seed must be from -2**63 to 2**64 - 1, but got {seed}"
    for seed in (str(2**64 - 1), "-1"):
        assert run("artune.sample", search, "--temperature", "1", "--seed", seed).returncode == 0


def test_an_export_target_that_is_not_empty_is_left_alone(search, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    line = one_error_line(run("artune.export", search, out))
    assert str(out) in line and "not an empty directory" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    taken = tmp_path / "model.txt"  # a file: said so, as train --checkpoint-dir says it (a review)
    taken.write_text("keep me")
    assert (
        one_error_line(run("artune.export", search, taken))
        == f"error: {taken}: is a file, not a directory; choose another OUT"
    )
    assert taken.read_text() == "keep me"


def test_a_corrupt_checkpoint_is_one_line_naming_it(search, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(search, copy, ignore=shutil.ignore_patterns(".lock"))
    path = Path(load(copy).best_model().origin["checkpoint"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = one_error_line(run("artune.sample", copy))
    assert str(path) in line and "cannot load checkpoint" in line
    one_error_line(run("artune.export", copy, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_corrupt_export_is_one_line_naming_it(search, tmp_path):
    out = tmp_path / "model"
    assert run("artune.export", search, out).returncode == 0
    weights = out / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    line = one_error_line(run("artune.sample", out))
    assert str(weights) in line
    with pytest.raises(Exception, match="cannot load the weights"):
        from_export(out)


def test_an_export_whose_weights_cannot_be_read_is_one_line_naming_the_file(search, tmp_path):
    """The sha256 check leaves a file it cannot read (gone, or a directory in its place) to safetensors' own load,
    whose error names the file: neither is a traceback, nor reported as weights that changed."""
    out = tmp_path / "model"
    assert run("artune.export", search, out).returncode == 0
    weights = out / WEIGHTS_FILE
    weights.unlink()
    with pytest.raises(CheckpointError, match="cannot load the weights") as missing:
        from_export(out)
    weights.mkdir()
    with pytest.raises(CheckpointError, match="cannot load the weights") as directory:
        from_export(out)
    for error in (missing, directory):
        assert str(weights) in str(error.value) and "changed after the export" not in str(error.value)


def test_an_export_whose_weights_changed_by_one_bit_is_one_line_and_an_older_export_loads(search, tmp_path):
    """safetensors checks its header and sizes only: a flipped bit inside the numbers loaded as another weight
    without a word. config.json records the weights' sha256; an export without it still loads."""
    out = tmp_path / "model"
    assert run("artune.export", search, out).returncode == 0
    config = json.loads((out / CONFIG_FILE).read_text())
    weights = out / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    assert config["weights_sha256"] == hashlib.sha256(data).hexdigest()
    data[-5] ^= 0x01  # inside the last tensor's numbers
    weights.write_bytes(bytes(data))
    line = one_error_line(run("artune.sample", out))
    assert str(weights) in line and "changed after the export" in line, line
    del config["weights_sha256"]  # as artune wrote exports before it recorded the sha256
    (out / CONFIG_FILE).write_text(json.dumps(config))
    assert from_export(out).generate("ROMEO:", 5).startswith("ROMEO:")


@pytest.mark.parametrize(
    ("file", "edit", "fragment"),
    [
        (VOCAB_FILE, lambda v: {**v, "tokens": v["tokens"][1:]}, "tokens, but the model's vocabulary has"),
        (VOCAB_FILE, lambda v: {**v, "tokenizer": "bpe"}, "tokenizer must be one of"),
        (VOCAB_FILE, lambda v: {**v, "tokenizer": ["character"]}, "unhashable type"),
        (VOCAB_FILE, lambda v: {**v, "separator": None}, "separator must be a string"),
        (CONFIG_FILE, lambda c: {**c, "origin": [1]}, "origin must be an object"),
        # a review: each was a traceback
        (VOCAB_FILE, lambda v: {**v, "tokens": [v["tokens"][0], *v["tokens"][:-1]]}, "must not list a token twice"),
        (CONFIG_FILE, lambda c: {**c, "model": {**c["model"], "n_heads": 0}}, "every dimension must be at least 1"),
        (CONFIG_FILE, lambda c: {**c, "model": {**c["model"], "seq_len": -1}}, "seq_len=-1"),
        # weights of another shape: torch's dozen lines of them, the first named and the rest counted
        (CONFIG_FILE, lambda c: {**c, "model": {**c["model"], "d_model": 2 * c["model"]["d_model"]}}, "more)"),
    ],
)
def test_an_export_with_a_damaged_vocabulary_or_origin_is_one_line(search, tmp_path, file, edit, fragment):
    """A vocabulary one token short loaded and printed fluent nonsense (every id decoded as its neighbour); another
    tokenizer, a separator of null or an origin that is not an object was a traceback."""
    out = tmp_path / "model"
    assert run("artune.export", search, out).returncode == 0
    (out / file).write_text(json.dumps(edit(json.loads((out / file).read_text()))))
    line = one_error_line(run("artune.sample", out))
    assert str(out / file) in line or str(out / WEIGHTS_FILE) in line, line
    assert fragment in line, line


def test_an_export_goes_to_an_empty_current_directory_and_refuses_a_file_on_its_path(search, tmp_path, monkeypatch):
    """OUT "." (an empty directory) failed with "Device or resource busy"; a file where a directory is to be, with
    "File exists" (a review)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    loaded = load(search).best_model()
    assert write_export(loaded, ".") == here and is_export(here)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"a_file is a file, not a directory"):
        write_export(loaded, tmp_path / "a_file" / "model")


def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(search):
    """safetensors' own error for a full disk was a traceback and exit 1 (a review); it is exit 4, as a search's
    storage failing."""
    from tests.test_storage_faults import FullDisk, mounted_tmpfs

    with mounted_tmpfs("4m") as disk:
        full = FullDisk(disk)
        try:
            line = one_error_line(run("artune.export", search, disk / "model"), code=4)  # the disk's, not the input's
            assert "cannot write the export" in line and "No space left on device" in line, line
            assert {p.name for p in disk.iterdir()} <= {f.name for f in full.files}  # no model, no staging directory
        finally:
            full.free()


def test_a_temperature_that_is_not_finite_is_one_line(search):
    assert "--temperature must be a finite number" in one_error_line(
        run("artune.sample", search, "--temperature", "inf")
    )


def test_a_corrupt_checkpoint_that_is_not_the_best_does_not_keep_the_best_from_loading(search, tmp_path):
    """Every kept checkpoint is read for the epoch it holds: one damaged that held another epoch blocked the best."""
    copy = tmp_path / "copy"
    shutil.copytree(search, copy, ignore=shutil.ignore_patterns(".lock"))
    best = load(copy).best_model().origin
    kept = sorted(Path(best["checkpoint"]).parent.parent.glob("checkpoint_*/checkpoint.pt"))
    others = [path for path in kept if str(path) != best["checkpoint"]]
    assert others, kept  # the smoke search's best trial keeps more than its best epoch's
    others[0].write_bytes(others[0].read_bytes()[:100])
    loaded = load(copy).best_model()
    assert (loaded.origin["checkpoint"], loaded.origin["epoch"]) == (best["checkpoint"], best["epoch"])


def test_a_running_searchs_tables_behind_the_checkpoints_ray_kept_are_read_again(search, best, tmp_path, monkeypatch):
    """Ray keeps a trial's 2 best checkpoints, and a running search's tables lag its trials by up to a write (2 s):
    best_model() (and artune.sample, artune.export) refused "none of its finished epochs [1] has a checkpoint (kept:
    epochs [2, 3])" in 7% of tries on a live search (a review). It reads the tables again, their next write holding
    the epochs Ray kept; a search whose tables never catch up is one line saying why."""
    import types

    import artune.inference as inference

    copy, whole, written, records = tables_behind(search, best["trial_id"], tmp_path)
    for path in (copy / "tune" / best["trial_id"]).glob("checkpoint_*/checkpoint.pt"):
        if checkpoint_epoch(path) == 1:  # Ray deleted it for better ones
            shutil.rmtree(path.parent)

    def the_next_write(seconds: float) -> None:
        for name, data in written.items():
            (copy / name).write_bytes(data)

    monkeypatch.setattr(inference, "time", types.SimpleNamespace(sleep=the_next_write), raising=False)
    loaded = load(copy).model(best["trial_id"])  # (no longer the best trial by the lagging tables)
    assert (loaded.origin["checkpoint"], loaded.origin["epoch"]) == (whole["checkpoint"], whole["epoch"])
    write_tables(copy, records.values())  # and never caught up (a killed driver's)
    line = one_error_line(run("artune.sample", copy, "--trial", best["trial_id"]))
    assert "none of the epochs its tables list [1] has a checkpoint, and the ones Ray kept are newer" in line, line
    assert "--resume writes them" in line


def test_a_checkpoint_ray_deletes_as_it_is_listed_is_skipped_not_refused(search, best, tmp_path, monkeypatch):
    """A running search's Ray deletes a trial's checkpoint once two better ones are kept: one gone between the
    listing and its read failed the load, "checkpoint file not found", before the tables behind were read again
    (a review)."""
    import types

    import artune.inference as inference
    from artune.train import checkpoint

    copy, whole, written, _ = tables_behind(search, best["trial_id"], tmp_path)
    first = copy / "tune" / best["trial_id"] / "checkpoint_000000" / "checkpoint.pt"  # epoch 1's, about to go
    first.parent.mkdir(exist_ok=True)
    first.write_bytes(b"listed, then deleted by Ray")
    read = checkpoint.read

    def deleted_as_listed(path, device):
        if Path(path) == first:
            first.unlink()
        return read(path, device)

    def the_next_write(seconds: float) -> None:
        for name, data in written.items():
            (copy / name).write_bytes(data)

    monkeypatch.setattr(inference.checkpoint, "read", deleted_as_listed)
    monkeypatch.setattr(inference, "time", types.SimpleNamespace(sleep=the_next_write), raising=False)
    loaded = load(copy).model(best["trial_id"])
    assert (loaded.origin["checkpoint"], loaded.origin["epoch"]) == (whole["checkpoint"], whole["epoch"])
    # a search without its tables yet (a running one's first epoch to come): said as such, not "neither a search
    # nor an exported model"
    monkeypatch.undo()
    for name in ("trials.parquet", "epochs.parquet"):
        (copy / name).unlink()
    line = one_error_line(run("artune.sample", copy))
    assert line.startswith(f"error: no trials.parquet in {copy}: its search has written its manifest"), line


def tables_behind(search: Path, trial_id: str, tmp_path: Path) -> tuple[Path, dict, dict, dict]:
    """A copy of ``search`` whose tables hold trial ``trial_id``'s first epoch only, running (as a write before its
    epoch 2 left them); its model's origin, the tables as written, and the records written."""
    copy = tmp_path / "live"
    shutil.copytree(search, copy, ignore=shutil.ignore_patterns(".lock"))
    whole = load(copy).model(trial_id).origin
    written = {name: (copy / name).read_bytes() for name in (TRIALS_FILE, "epochs.parquet")}
    records = read_records(copy)
    trial = records[trial_id]
    trial.epochs, trial.status = {1: trial.epochs[1]}, "running"
    write_tables(copy, records.values())
    return copy, whole, written, records


def checkpoint_epoch(path: Path) -> int:
    from artune.train import checkpoint

    return int(checkpoint.read(path, torch.device("cpu"))[1]["epoch"])


def test_an_export_names_its_checkpoint_by_an_absolute_path(search, tmp_path):
    """A search given relative to the working directory: the export's origin named the checkpoint relative to it
    (its search_path was absolute), a path that means nothing where the export is read."""
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "artune.export", search.name, str(out)],
        cwd=search.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    origin = json.loads((out / CONFIG_FILE).read_text())["origin"]
    assert Path(origin["checkpoint"]).is_absolute() and Path(origin["checkpoint"]).is_file(), origin
