"""artune.compat's Ray sites: each internal is where the installed Ray keeps it (so the fix is in force, not its
fallback), and each falls back to Ray's public behaviour where the internal has moved."""

from __future__ import annotations

import os
import sys
import types

import pytest

ray = pytest.importorskip("ray")

from artune import compat  # noqa: E402


def test_the_loopback_setting_reaches_a_ray_already_imported(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    compat.keep_local_ray_on_loopback()
    assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_the_loopback_setting_falls_back_to_the_environment_where_rays_constant_has_moved(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.delattr(ray_constants, "ENABLE_RAY_CLUSTER")
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    compat.keep_local_ray_on_loopback()
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_a_tuner_takes_new_callbacks_and_a_new_budget_through_its_private_configs(tmp_path):
    """ray#41364 is open: what give_restored_tuner sets is on Ray's own Tuner (built here, not fitted)."""
    from ray import tune

    callback = tune.Callback()
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(time_budget_s=5.0),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="t"))
    assert compat.give_restored_tuner(tuner, [callback], 30.0)
    assert tuner._local_tuner.get_run_config().callbacks == [callback]
    assert tuner._local_tuner._tune_config.time_budget_s == 30.0
    assert not compat.give_restored_tuner(types.SimpleNamespace(), [callback], 30.0)  # moved: Ray's own behaviour


def test_the_searcher_states_private_helpers_are_where_tune_keeps_them():
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint

    assert "{}" in SearchGenerator.CKPT_FILE_TMPL and callable(_atomic_save) and callable(_load_newest_checkpoint)


def test_repointing_leaves_the_state_alone_where_tunes_helpers_have_moved(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.tune.search.search_generator", None)  # an ImportError on import
    (tmp_path / "search_gen_state-1.json").write_bytes(b"unchanged")
    compat.repoint_searcher_state(tmp_path)
    assert (tmp_path / "search_gen_state-1.json").read_bytes() == b"unchanged"
