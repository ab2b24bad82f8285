"""The Ray a search runs on: a private local instance on loopback, or a cluster's; started, checked, stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlparse

from artune.compat import keep_local_ray_on_loopback, kill_local_monitor_first, ray_auto_address
from artune.errors import SearchError
from artune.humanize import first_line
from artune.search.watchdog import guard_session, private_instance_driver, ray_apart, start_guard, stop_guard

if TYPE_CHECKING:
    from artune.search.plan import Plan

CONNECT_TIMEOUT_S = 5.0
EXIT_CLUSTER_LOST = 3
PROBE_EVERY_S, PROBES_LOST = 1.0, 3  # a cluster is lost when its GCS or this node's raylet fails 3 probes in a row
RAYLET = "this node's raylet"  # lost at its first refusal: its port closed; Ray ends the driver seconds later
_TERMINATED = threading.Event()  # a SIGTERM came: the search ends as after Ctrl-C, with an exit status of its own


def stop_on_sigterm() -> None:
    """Take SIGTERM (what batch schedulers send) as Ctrl-C: Ray Tune saves its state and stops the trials, the
    tables and the study are written, and ``--resume`` continues. Ray's core worker installs a handler of its
    own in ``ray.init``, so this is called again after it. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum: int, frame: object) -> None:
        _TERMINATED.set()
        if not callable(signal.getsignal(signal.SIGINT)):  # SIGINT ignored (a shell's background job): it would be
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGINT)  # to Tune's Ctrl-C handler while it runs, else a KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """One search's SIGTERM handling (:func:`stop_on_sigterm`): the process's own handler comes back after it, and
    the next search in the same process (a notebook's) starts with no SIGTERM noted."""
    main = threading.current_thread() is threading.main_thread()  # only its handlers can be set
    previous = signal.getsignal(signal.SIGTERM) if main else None
    _TERMINATED.clear()
    stop_on_sigterm()
    try:
        yield
    finally:
        if main:  # (None: a handler set outside Python, which cannot be put back; the default is the nearest)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """A Ctrl-C or a SIGTERM while the search starts is raised where the block ends, if Python lost it on the way.

    Python raises KeyboardInterrupt wherever the main thread is when the key comes. Inside the hook a fork runs
    in the parent (logging's lock release, as Ray's ``Popen`` of each of its processes forks), an exception is
    printed as ignored, and the search went on as if no key had been pressed (seen in CI); inside a C extension's
    import (Ray's, as ``import ray`` runs) Cython turned it into a warning, with the same end (seen in CI). Each
    press is also noted here and raised again once the block ends, and Python's report of one it ignored is left
    out.
    So is the SystemExit of Ray's own SIGTERM handler, which ``ray.init`` sets for the start (the search ran to
    its end after a SIGTERM and a traceback). Only the main thread sets handlers; a SIGINT ignored (a shell's
    background job) is left ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    pressed, terminated_here = threading.Event(), threading.Event()
    report_unraisable = sys.unraisablehook

    def interrupt(signum: int, frame: object) -> None:
        pressed.set()
        previous(signum, frame)  # Python's own: KeyboardInterrupt

    def unraisable(info: Any) -> None:
        if issubclass(info.exc_type, SystemExit) and getattr(info.exc_value, "code", None) == signal.SIGTERM:
            terminated_here.set()  # raised below
        elif not (pressed.is_set() and issubclass(info.exc_type, KeyboardInterrupt)):
            report_unraisable(info)  # (the press is raised below: no traceback of it on the terminal)

    if callable(previous):
        signal.signal(signal.SIGINT, interrupt)
    sys.unraisablehook = unraisable
    try:
        yield
    except Exception:  # a start that failed after a signal was lost in it: the signal is what the user sees
        if not (terminated_here.is_set() or pressed.is_set()):
            raise
    finally:
        if callable(previous):
            signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = report_unraisable
    if terminated_here.is_set():
        raise SystemExit(signal.SIGTERM)
    if pressed.is_set():
        raise KeyboardInterrupt


def terminated() -> bool:
    """Whether a SIGTERM ended the search."""
    return _TERMINATED.is_set()


def ray_temp_dir() -> Path:
    """Where a Ray instance started on this machine keeps its sessions (Ray's own rule)."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(base or "/tmp") / "ray"


def token_auth_enabled() -> bool:
    """Whether Ray authenticates to the cluster with a token (``RAY_AUTH_MODE=token``; off by default)."""
    return os.environ.get("RAY_AUTH_MODE", "disabled").lower() == "token"


def check_address(address: str, label: str = "--address") -> None:
    """Fail in seconds when nothing answers at ``address`` (Ray alone retries for minutes); ``auto``: at the
    cluster Ray would join. ``label``: what the message calls the address."""
    if address == "auto":
        try:
            found = ray_auto_address()
        except LookupError:
            unset = "" if os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS is unset, and "
            raise SearchError(
                f"{label} auto: Ray finds no cluster here ({unset}no ray start runs on this machine); start one "
                "with ray start --head, or give the cluster's --address HOST:6379"
            ) from None
        if found is not None:
            given = os.environ.get("RAY_ADDRESS", "auto") != "auto"  # Ray's lookup: RAY_ADDRESS, else ray start's
            if not given:
                refuse_another_searchs_instance(found, f"{label} auto")
            where = "RAY_ADDRESS" if given else "the cluster ray start runs here"
            check_address(found, f"{label} auto ({where}):")
        return
    if address.startswith("ray://"):
        # Through Ray's client, Tune runs on the cluster, and with it the callback that writes the tables and
        # the study: they would be written on the head (or nowhere), while this driver, seeing no result,
        # would write its empty tables over the search's at a time budget's end.
        raise SearchError(
            f"{label} {address}: Ray's client runs the search's Tune loop on the cluster, where "
            "artune cannot keep its tables; run the search as a Ray job on the head (ray job submit, "
            "see docs/cluster.md) or on a node of the cluster with --address HOST:6379"
        )
    if address.startswith(("http://", "https://")):
        raise SearchError(
            f"{label} {address}: that is the dashboard's address (what ray job submit takes); give the "
            "cluster's: HOST:6379"
        )
    check_answers(address, label)


def refuse_another_searchs_instance(address: str, label: str) -> None:
    """Refuse the Ray instance at ``address`` where it is another artune search's private one (which ends with
    that search, taking this one's trials with it). Ray's ``auto`` joins any instance it finds running here."""
    driver = private_instance_driver(_port(address))
    if driver is not None:
        raise SearchError(
            f"{label}: the Ray instance Ray finds here ({address}) is the private one of another artune search "
            f"(driver pid {driver}), which ends with it; start a cluster with ray start --head, or leave --address "
            "out for a private instance of this search's own"
        )


def _port(address: str) -> int:
    """The port of a HOST:PORT Ray found (0 where it has none)."""
    port = address.rpartition(":")[2]
    return int(port) if port.isdigit() else 0


def check_answers(address: str, label: str) -> None:
    """Refuse ``address`` (after ``label`` in the message) where it is not HOST:PORT or nothing answers there."""
    try:
        parsed = urlparse(address if "://" in address else f"tcp://{address}")
        host, port = parsed.hostname, parsed.port  # .port raises on a port that is not a number in 0-65535
    except ValueError:
        host = port = None
    if not host or not port:
        raise SearchError(f"{label} {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise SearchError(
            f"{label} {address}: nothing answers there ({exc.strerror or exc}); "
            "is the head running (ray start --head) and the port open?"
        ) from None


def set_ray_environment(plan: Plan) -> None:
    """The settings Ray and Ray Tune read from the environment: before anything imports them."""
    if not plan.address:
        keep_local_ray_on_loopback()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # artune checkpoints every epoch on purpose (resume loses at most one epoch); Ray's hint about it is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's automatic loggers include TensorBoard's, whose tensorboardX imports torch into the driver;
    # build_tuner adds the JSON and CSV loggers itself. TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 brings it back.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A trial that ends without training (its deadline passed before its first epoch, or a resume's
    # tables saw it end) returns without a result. Tune 2.60 then checks that its final result holds
    # the metric, and its exemption for "the trial just returned" misses the flattened config/... keys
    # of that result: the search would end in a ValueError. artune checks the metric's name before Ray
    # starts (spaces.METRICS), and the searcher and ASHA take a result without it as such.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if "mlflow" not in plan.space.settings.log:
        # Ray Tune's usage tagging of callbacks imports mlflow wherever it is installed, and mlflow's import starts
        # its telemetry (an installation id written under ~/.config/mlflow): not for a search that never uses it.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def init_ray(plan: Plan) -> None:
    """Start the private local instance, or connect to ``plan.address``, and check that a trial fits a node."""
    # ray.init takes seconds (a local instance: tens of seconds on a busy machine) and says nothing meanwhile
    print(f"connecting to {plan.address}..." if plan.address else "starting a local Ray instance...", flush=True)
    try:
        start_ray(plan)
    except SystemExit as exc:
        # Ray's handler, from ray.init's first line on, is sys.exit(SIGTERM): the driver ended with exit 15 and no
        # word. A SIGTERM here ends the start as one before it or after it does (Ctrl-C's way, exit 143).
        if exc.code != signal.SIGTERM:
            raise
        _TERMINATED.set()
        raise KeyboardInterrupt from None
    finally:
        stop_on_sigterm()  # again, however the start ended: ray.init put Ray's own handler in its place
    check_fits_a_node(plan)


def start_ray(plan: Plan) -> None:
    """``ray.init``: the private local instance, or ``plan.address``; whatever fails is one line."""
    import ray

    with interrupts_kept():  # a Ctrl-C while Ray starts its processes is never lost
        if plan.address:
            try:
                ray.init(address=plan.address, logging_level=logging.ERROR, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the user gets one line and nothing is left
                first = first_line(exc)[:300]
                hint = (
                    "; a driver must run on a node of the cluster (or go through ray job submit)"
                    if "node info" in str(exc).lower()
                    else "; start one with ray start --head, or give the cluster's --address HOST:6379"
                    if "could not find any running ray instance" in str(exc).lower()  # --address auto, alone here
                    else ""
                    if token_auth_enabled()
                    else "; if the head uses Ray's token authentication, set RAY_AUTH_MODE=token (with the head's "
                    "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                )
                raise SearchError(
                    f"{plan.address_label} {plan.address}: Ray could not connect ({type(exc).__name__}: {first}){hint}"
                ) from None
            if not token_auth_enabled():
                print(
                    f"warning: connected to {plan.address} with Ray's token authentication off (RAY_AUTH_MODE is not "
                    "'token'): anyone who reaches the cluster can run code on it; keep it on a private network",
                    file=sys.stderr,
                    flush=True,
                )
        else:
            # A private instance ("local": never a cluster that `ray start` left running here), no dashboard; its
            # processes end with the driver, however it ends, and apart from its process group (see watchdog.py).
            start_guard()
            try:
                with ray_apart():
                    context = ray.init(
                        address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
                    )
                guard_session(context.address_info.get("session_dir") or "")
            except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the user gets one line and nothing is left
                first = first_line(exc)[:300]
                raise SearchError(
                    f"Ray could not start a local instance ({type(exc).__name__}: {first}); "
                    f"its logs are under {ray_temp_dir()}"
                ) from None


def check_fits_a_node(plan: Plan) -> None:
    """A trial's resources must fit the cluster, and one node of it: a trial never spans nodes."""
    import ray

    resources = ray.cluster_resources()
    s = plan.space.settings
    if s.gpu > 0 and resources.get("GPU", 0) < s.gpu:
        raise SearchError(
            f"gpu: {s.gpu} per trial, but the cluster has {resources.get('GPU', 0):g} GPUs; "
            "lower --gpus-per-trial or add GPU nodes"
        )
    if resources.get("CPU", 0) < s.cpu:
        raise SearchError(
            f"cpu: {s.cpu} per trial, but the cluster has {resources.get('CPU', 0):g} CPUs; lower --cpus-per-trial"
        )
    # A data-parallel trial's workers may spread over nodes, but the cluster must hold them all at once
    if s.workers > 1 and (resources.get("CPU", 0) < s.cpu * s.workers or resources.get("GPU", 0) < s.gpu * s.workers):
        gpus = f" and gpu: {s.gpu:g}" if s.gpu else ""
        has = f" and {resources.get('GPU', 0):g} GPUs" if s.gpu else ""
        raise SearchError(
            f"workers: {s.workers} x cpu: {s.cpu:g}{gpus} per trial, but the cluster has {resources.get('CPU', 0):g} "
            f"CPUs{has}; lower --workers-per-trial, --cpus-per-trial{' or --gpus-per-trial' if s.gpu else ''}"
        )
    # The cluster's totals can hold a trial while no node does (two 1-GPU nodes, 2 GPUs a trial).
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if nodes and not any(n.get("CPU", 0) >= s.cpu and n.get("GPU", 0) >= s.gpu for n in nodes):
        shapes = ", ".join(sorted({f"{n.get('CPU', 0):g} CPUs and {n.get('GPU', 0):g} GPUs" for n in nodes}))
        raise SearchError(
            f"resources: {s.cpu:g} CPUs and {s.gpu:g} GPUs per trial, but no node has that much "
            f"(nodes: {shapes}); a trial runs on one node: lower --cpus-per-trial or --gpus-per-trial"
        )


class ClusterWatch:
    """While a search runs on a cluster (``--address``): a thread that probes the head's GCS and this node's raylet
    and, where one stops answering, ends the driver with one line and exit status 3 (EXIT_CLUSTER_LOST).

    Ray's core worker ends a driver whose raylet is gone with exit status 1 and no word of artune's, from C++, some
    seconds after Tune has printed tracebacks of the lost trials (ActorUnavailableError); a GCS gone leaves it
    waiting. Ray's processes are not artune's to stop there: the tables (rewritten every few seconds) and Ray's own
    result files hold every result so far, and ``--resume`` continues on a cluster that is back.
    A probe is a TCP connection, opened and closed: what the gRPC servers accept without a word in their logs.
    """

    def __init__(self, plan: Plan) -> None:
        import ray

        self.plan = plan
        context = ray.get_runtime_context()
        node = next((n for n in ray.nodes() if n.get("NodeID") == context.get_node_id()), {})
        host, _, port = context.gcs_address.rpartition(":")  # where --address led (auto: the cluster's own)
        self.targets = {"the head's GCS": (host.strip("[]"), int(port))}
        if node.get("NodeManagerAddress") and node.get("NodeManagerPort"):
            self.targets[RAYLET] = (node["NodeManagerAddress"], int(node["NodeManagerPort"]))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="artune-cluster-watch", daemon=True)

    def __enter__(self) -> ClusterWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()  # before Ray shuts down: its servers then close on purpose

    def watch(self) -> None:
        failures = dict.fromkeys(self.targets, 0)
        while not self.stopped.wait(PROBE_EVERY_S):
            for what, (host, port) in self.targets.items():
                try:
                    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                        failures[what] = 0
                except OSError as exc:
                    # A raylet is never restarted on its port; the head's GCS may be (Ray's GCS fault tolerance)
                    refused = what == RAYLET and isinstance(exc, ConnectionRefusedError)
                    failures[what] = PROBES_LOST if refused else failures[what] + 1
                    if failures[what] >= PROBES_LOST and not self.stopped.is_set():
                        self.lost(
                            what, f"{host}:{port}", exc, "refused a connection" if refused else "stopped answering"
                        )

    def lost(self, what: str, where: str, exc: OSError, how: str) -> None:
        p = self.plan
        print(
            f"error: lost the Ray cluster at {p.address}: {what} ({where}) {how} "
            f"({exc.strerror or exc}); the tables hold every result so far; once the cluster is back, continue with: "
            f"{p.resume_command} --address HOST:PORT",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_CLUSTER_LOST)  # now: Ray's core worker would end the process in seconds, with exit status 1


def stop_ray() -> None:
    """``ray.shutdown()``, its local instance's monitor first; a no-op where Ray was never imported or started."""
    ray = sys.modules.get("ray")
    if ray is not None:
        kill_local_monitor_first()
        ray.shutdown()
    stop_guard()  # ends whatever of the instance outlived the shutdown
