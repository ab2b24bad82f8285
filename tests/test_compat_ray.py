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


def test_address_auto_is_the_cluster_ray_would_join_or_left_to_ray_where_its_lookup_moved(monkeypatch):
    from ray._private import services

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert compat.ray_auto_address() == "127.0.0.1:1"
    monkeypatch.delattr(services, "get_ray_address_from_environment")
    assert compat.ray_auto_address() is None


def test_a_tuner_takes_new_callbacks_and_a_new_budget_through_its_private_configs(tmp_path):
    """ray#41364 is open: what give_restored_tuner sets is on Ray's own Tuner (built here, not fitted)."""
    from ray import tune

    callback = tune.Callback()
    tuner = tune.Tuner(
        lambda config: None,
        tune_config=tune.TuneConfig(time_budget_s=5.0),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="t"),
    )
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


def test_a_saved_searcher_forgets_the_running_trials_tunes_saved_state_holds_as_ended(tmp_path):
    """Tune's own searcher (Optuna's, behind the concurrency limit and artune's cutoff, as a search builds it),
    saved with two running trials; one of them forgotten, the state restored by Tune's own code."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    from artune.search.cutoff import BudgetCutoff

    def generator() -> SearchGenerator:
        space = {"lr": optuna.distributions.FloatDistribution(0.1, 1.0)}
        optuna_search = OptunaSearch(space=space, metric="loss", mode="min")
        return SearchGenerator(BudgetCutoff(ConcurrencyLimiter(optuna_search, max_concurrent=2), grace_period=1))

    saved = generator()
    assert saved.searcher.suggest("a") and saved.searcher.suggest("b") and saved.searcher.suggest("c") is None
    saved.save_to_dir(str(tmp_path), "1")
    assert compat.forget_ended_running_trials(tmp_path, frozenset({"a"})) == {"b"}
    assert compat.forget_ended_running_trials(tmp_path, frozenset({"a"})) == frozenset()  # once
    restored = generator()
    restored.restore_from_dir(str(tmp_path))
    limiter = restored.searcher.searcher
    assert limiter.live_trials == {"a"} and limiter.num_unfinished_live_trials == 1
    assert restored.searcher.suggest("d")  # the slot is free again


def test_a_group_of_repeats_runs_while_one_of_its_trials_does(tmp_path):
    """``repeats: 2``: the limit counts a group by its first trial's id; that trial ended, its second running."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter, Repeater, SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    from artune.search.cutoff import BudgetCutoff

    space = {"lr": optuna.distributions.FloatDistribution(0.1, 1.0)}
    limited = ConcurrencyLimiter(OptunaSearch(space=space, metric="loss", mode="min"), max_concurrent=2)
    saved = SearchGenerator(BudgetCutoff(Repeater(limited, repeat=2, set_index=True), grace_period=1))
    assert all(saved.searcher.suggest(tid) for tid in "abcd") and saved.searcher.suggest("e") is None
    assert limited.live_trials == {"a", "c"}  # the groups (a, b) and (c, d)
    saved.save_to_dir(str(tmp_path), "1")
    # a, c and d ended, b runs: the group (c, d) has ended, the group (a, b) has not
    assert compat.forget_ended_running_trials(tmp_path, frozenset({"b"})) == {"c"}


def test_forgetting_leaves_the_state_alone_where_tunes_helpers_have_moved(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.tune.search.search_generator", None)  # an ImportError on import
    (tmp_path / "search_gen_state-1.json").write_bytes(b"unchanged")
    assert compat.forget_ended_running_trials(tmp_path, frozenset()) == frozenset()
    assert (tmp_path / "search_gen_state-1.json").read_bytes() == b"unchanged"


def test_the_monitor_of_a_local_instance_goes_before_rays_shutdown_and_every_process_ends(
    monkeypatch, ray_env_restored
):
    """Ray's shutdown would leave the monitor blocked on a stopped GCS for a second; it goes first, while the
    GCS it reports to is still up, and Ray stops the rest."""
    from ray._private.node import Node

    from artune.search import stop_ray

    kill_all, left_to_ray = Node.kill_all_processes, []
    monkeypatch.setattr(
        Node,
        "kill_all_processes",
        lambda self, **kw: left_to_ray.append(set(self.all_processes)) or kill_all(self, **kw),
    )
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        node = ray._private.worker._global_node
        processes = {kind: info.process for kind, infos in node.all_processes.items() for info in infos}
    finally:
        stop_ray()
    assert not ray.is_initialized()
    assert "monitor" in processes and left_to_ray and "monitor" not in left_to_ray[0] and "gcs_server" in left_to_ray[0]
    for process in processes.values():
        process.wait(10)  # raises TimeoutExpired where one outlived stop_ray


def test_without_rays_private_node_the_shutdown_is_rays_own(monkeypatch):
    from ray._private import worker

    monkeypatch.delattr(worker, "_global_node")
    compat.kill_local_monitor_first()  # nothing to do, and nothing raised


@pytest.fixture
def pythons_sigint():
    """Python's own SIGINT handler, as a search's driver has it (a Tuner earlier in this process leaves Tune's)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    usr1 = signal.getsignal(signal.SIGUSR1)  # (Tune sets one too)
    yield
    signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGUSR1, usr1)


def test_a_ctrl_c_tunes_handler_took_is_seen_and_one_it_never_got_is_not(pythons_sigint):
    import signal

    from ray.tune.tune import _setup_signal_catching  # what Tuner.fit runs: the handler is in force as fit runs

    usr1 = signal.getsignal(signal.SIGUSR1)
    with compat.ctrl_c_taken_by_tune() as taken:
        interrupted = _setup_signal_catching()
        signal.raise_signal(signal.SIGINT)  # Tune's handler: no KeyboardInterrupt
    assert interrupted.is_set() and taken.is_set()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and signal.getsignal(signal.SIGUSR1) is usr1

    with compat.ctrl_c_taken_by_tune() as taken:
        _setup_signal_catching()  # a fit that ends by itself leaves Tune's handlers in place
    assert not taken.is_set()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and signal.getsignal(signal.SIGUSR1) is usr1


def test_a_ctrl_c_taken_where_sigint_is_ignored_is_seen_and_a_sigterm_before_tunes_handler_still_stops(
    pythons_sigint,
):
    """A shell's background job ignores SIGINT: Tune's handler puts that back when it takes a SIGINT (artune's
    SIGTERM handler raises one); before Tune's handler is set, a SIGTERM raises KeyboardInterrupt as without the
    block (a first version set a handler of its own there, which swallowed it)."""
    import signal

    from ray.tune.tune import _setup_signal_catching

    from artune.search import runtime
    from artune.search.runtime import sigterm_as_interrupt, terminated

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            with compat.ctrl_c_taken_by_tune() as taken:
                _setup_signal_catching()
                signal.raise_signal(signal.SIGTERM)
            assert taken.is_set() and terminated() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            with pytest.raises(KeyboardInterrupt), compat.ctrl_c_taken_by_tune() as taken:
                signal.raise_signal(signal.SIGTERM)  # fit's first instants, Tune's handler not yet set
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        runtime._TERMINATED.clear()  # the next test's search starts with no SIGTERM noted


def test_with_tunes_handler_off_a_ctrl_c_is_pythons_own(pythons_sigint, monkeypatch):
    import signal

    from ray.tune.tune import _setup_signal_catching

    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    with pytest.raises(KeyboardInterrupt), compat.ctrl_c_taken_by_tune() as taken:
        _setup_signal_catching()
        signal.raise_signal(signal.SIGINT)
    assert not taken.is_set() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
