"""Where a search runs: a new local Ray, or an existing cluster, and whether its trials fit there.

An existing cluster is named by ``ray_address`` or, failing that, by the ``RAY_ADDRESS``
environment variable (Ray's own convention); ``local`` and no address mean a Ray started for the
search. Everything that can be checked without training is checked here, so a wrong address or an
impossible resource request fails at once with a :class:`ConfigError` instead of waiting forever.
A Ray started here listens on 127.0.0.1 only and starts no dashboard. Ray is imported only inside
the functions.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunetune._signals import sigterm_kept
from prunetune.exceptions import ConfigError
from prunetune.search.config import ray_address_parts

log = logging.getLogger("prunetune")


@dataclass(frozen=True)
class Cluster:
    """The cluster a search asks for: ``address`` as given to ``ray.init`` and where it came from.

    ``named`` is the existing cluster's address (from ``ray_address`` or ``RAY_ADDRESS``; ``what``
    says which), or None when the search starts its own local Ray.
    """

    address: str | None
    named: str | None
    what: str

    @classmethod
    def of(cls, ray_address: str | None) -> Cluster:
        if ray_address is not None:
            named, what = ray_address, "ray_address"
        else:
            named, what = os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"
        return cls(ray_address, None if named in (None, "local") else named, what)


def connect(cluster: Cluster) -> bool:
    """Start a quiet local Ray, or connect to ``cluster.named``, unless one is running; True if done here."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our callback logs; no CSV/TBX
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # without per-trial result files Ray's end-of-run analysis warns about each trial; MLflow has them
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    from prunetune.search.ray_parts import QuietTrialErrors

    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietTrialErrors) for f in logger.filters):
            logger.addFilter(QuietTrialErrors())
    import ray

    if cluster.named is not None:
        check_reachable(cluster.named, what=cluster.what)
    if ray.is_initialized():
        return False
    # a new local cluster enables token auth by default and warns that it did: keep that quiet
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if cluster.named is not None:
        log.info("connecting to the Ray cluster at %s", cluster.named)
    try:
        with sigterm_kept():  # Ray's own SIGTERM handler would record a killed search as failed
            if cluster.named is None or is_loopback(cluster.named):
                # a head on 127.0.0.1 (`ray start --head` on loopback) needs this driver on loopback too:
                # Ray would otherwise rewrite 127.0.0.1 to the machine's address and find nothing there
                _init_on_loopback(ray, address=cluster.address, include_dashboard=False,
                                  logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(address=cluster.address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(_connection_error(cluster, exc)) from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM inside ray.init: stop what it had started
        ray.shutdown()
        raise
    return True


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` (or ``ray://``) address names this machine's loopback interface."""
    parts = ray_address_parts(address)
    return parts is not None and parts[0] in ("127.0.0.1", "localhost", "::1")


def _init_on_loopback(ray: Any, **init_kwargs: Any) -> None:
    """``ray.init`` for a Ray started by the search, listening on 127.0.0.1 only, with no dashboard.

    A local Ray otherwise binds gcs_server, raylet and every worker to all interfaces (``*:port``):
    anyone on the network could submit work to it. Ray derives the node address, and with it the
    interface its servers bind, from ``ray_constants.ENABLE_RAY_CLUSTER`` (the switch behind
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read only at import): off, the node is 127.0.0.1 and
    every server listens there. It is switched off around this ``ray.init`` only, so connecting to
    a real cluster later in the same process is unaffected.
    """
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # another Ray version: bind as it does
        log.warning("this Ray version offers no loopback-only switch; the local Ray listens on all interfaces")
        ray.init(**init_kwargs)
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
    node_ip = ray.util.get_node_ip_address()
    if node_ip not in ("127.0.0.1", "::1"):
        log.warning("the local Ray took node address %s, not 127.0.0.1: it may listen on that interface", node_ip)


def _connection_error(cluster: Cluster, exc: Exception) -> str:
    if cluster.named is None:
        return (f"could not start a local Ray (Ray: {exc}). If a `ray start` cluster on this machine "
                "crashed, `ray stop` clears it; or name a running cluster with ray_address (--ray-address)")
    hint = ""
    if cluster.named != "auto" and "RAY_AUTH_MODE" not in os.environ:
        hint = ("; if the cluster uses token authentication (`ray start --head` turns it on when "
                "~/.ray/auth_token exists), set RAY_AUTH_MODE=token and make its token available "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    return (f"cannot connect to a Ray cluster at {cluster.what}={cluster.named!r} (Ray: {exc}){hint}. "
            f"Otherwise start one with `ray start --head`, or leave out {cluster.what} to run on a local Ray")


def check_reachable(address: str, *, what: str = "ray_address", timeout_s: float = 10.0) -> None:
    """Fail fast if a ``host:port`` or ``ray://host:port`` address takes no connections.

    ``ray.init`` would otherwise retry for a long while (a GCS address: without end). ``auto`` is
    left to Ray, which fails at once when it finds no cluster. Raises :class:`ConfigError` naming
    ``what`` (``ray_address`` or ``RAY_ADDRESS``) and the address.
    """
    parts = ray_address_parts(address, what=what)
    if parts is None:
        return
    try:
        with socket.create_connection(parts, timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"no Ray cluster answers at {what}={address!r} ({reason}); start one with "
                          f"`ray start --head` and pass the address it prints, or leave out {what} to run "
                          "on a local Ray") from None


def local_resources() -> dict[str, float]:
    """What a Ray started on this machine would offer: its CPUs and CUDA devices."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def unmet_resources(cpus: float, gpus: float, available: Mapping[str, float], where: str = "the cluster") -> str | None:
    """What one trial asks for beyond the total ``available`` (Ray's "CPU"/"GPU") of ``where``, in words.

    None when a trial fits. A trial that does not fit would wait for resources forever.
    """
    unmet = [f"{key}_per_trial={want:g} but {where} has {available.get(name, 0.0):g} {name}s in all"
             for key, name, want in (("cpus", "CPU", cpus), ("gpus", "GPU", gpus))
             if want > available.get(name, 0.0)]
    return "; ".join(unmet) or None


def check_resources(cluster: Cluster, cpus: float, gpus: float) -> None:
    """Refuse per-trial resources the search's Ray cannot hold, before anything is trained or tracked.

    A running Ray is asked for its totals; before a local Ray starts, this machine's CPUs and CUDA
    devices stand for it (and the started Ray is checked again). On a named cluster an autoscaler
    may still add nodes, so a shortfall there is a warning.
    """
    import ray

    if ray.is_initialized():
        available, where = ray.cluster_resources(), "the Ray cluster"
    elif cluster.named is None:
        available, where = local_resources(), "this machine"
    else:
        return
    unmet = unmet_resources(cpus, gpus, available, where)
    if unmet is None:
        return
    if cluster.named is not None:
        log.warning("%s: trials wait until the cluster at %s has them (an autoscaler may add nodes)",
                    unmet, cluster.named)
        return
    raise ConfigError(f"no trial could ever start: {unmet}. Lower cpus_per_trial / gpus_per_trial "
                      "(--cpus-per-trial, --gpus-per-trial) or run on a Ray cluster that has them (ray_address)")
