"""Task runners chosen by configuration, and a per-process cache of the forecasting model.

Production scale-out is configuration, not code: `[flows] task_runner = "dask"` with a
`dask_address` runs the same flows on an existing cluster.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prefect.task_runners import ThreadPoolTaskRunner

from cashcast.config import Config
from cashcast.jobs import ModelRef, load_model
from cashcast.workspace import Workspace

if TYPE_CHECKING:
    from distributed import LocalCluster

_shared_server: Any = None
_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()  # the last CACHED_MODELS models loaded
CACHED_MODELS = 2  # the champion and one past morning's: a served process must not keep every version
_cache_lock = threading.Lock()


def local_cluster(n_workers: int) -> LocalCluster:
    """A temporary Dask LocalCluster of `n_workers` one-thread worker processes.

    Its workers start without the MALLOC_TRIM_THRESHOLD_ Dask's nanny sets by default: setting it turns
    off glibc's dynamic mmap threshold, so every large numpy temporary is mapped and faulted in afresh,
    and training ran 2.1x slower (10,000 devices on 2 workers: 103 s against 48.5 s without it). The
    nannies read the setting while the cluster starts, so it is changed for that moment only.
    """
    import dask
    from distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)


@contextmanager
def dask_cluster(config: Config, prefect_tasks: bool = False) -> Iterator[Config]:
    """`config` pointing at one Dask scheduler for a whole run: its `dask_address`, or a LocalCluster
    started here and closed on exit. Unchanged without `task_runner = "dask"`.

    The nightly run trains and then plans on the same cluster: each would otherwise start its own, and
    every start spawns the worker processes and imports the stack in them again. With `prefect_tasks`
    (Prefect tasks will run on it) the workers get the one Prefect API to report to.
    """
    if config.flows.task_runner != "dask" or config.flows.dask_address:
        yield config
        return
    if prefect_tasks:
        share_prefect_api()  # before the workers start: they inherit the environment
    with local_cluster(config.flows.dask_workers) as cluster:
        yield config.updated(flows={"dask_address": cluster.scheduler_address})


@contextmanager
def training_on_configured_runner(config: Config) -> Iterator[None]:
    """Training's fits (device chunks and the network's models) on the Dask cluster `[flows]` configures
    (a temporary LocalCluster without a `dask_address`); on the local process pool otherwise.

    The fits are plain Dask futures, not Prefect tasks: they are pure computations on arrays, and the
    flow around them already records the training run.
    """
    if config.flows.task_runner != "dask":
        yield
        return
    from distributed import Client

    from forecasting.backtest import training_executor

    with (
        dask_cluster(config) as on_cluster,
        Client(on_cluster.flows.dask_address) as client,
        training_executor(client.get_executor()),
    ):
        yield


def make_task_runner(config: Config):
    """Threads sized to the cores by default; prefect-dask's DaskTaskRunner when configured."""
    if config.flows.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        share_prefect_api()
        if config.flows.dask_address:
            return DaskTaskRunner(address=config.flows.dask_address)
        return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={"n_workers": config.flows.dask_workers})
    return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2)


def share_prefect_api() -> str:
    """Make sure Dask worker processes report to ONE Prefect API.

    Without PREFECT_API_URL every worker process would start its own temporary server. Use the
    configured or active API; failing that, start one temporary server for this process and its workers.
    """
    global _shared_server
    from prefect.settings import PREFECT_API_URL

    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        _shared_server = SubprocessASGIServer()
        _shared_server.start()
        url = _shared_server.api_url
    os.environ["PREFECT_API_URL"] = url
    return url


def retry_options(config: Config) -> dict[str, Any]:
    """Retries with exponential backoff for tasks that read and write the workspace (I/O can flicker)."""
    from prefect.tasks import exponential_backoff

    return {
        "retries": config.flows.retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=config.flows.retry_delay_seconds),
    }


def cached_model(ws: Workspace, config: Config, ref: ModelRef | None = None) -> Any:
    """Load the model once per worker process and version, not once per chunk.

    `ref` (from `jobs.morning_model`) names a registered version or a pickled file for a morning
    before the champion's training; the champion by default.
    """
    from forecasting import registry

    ref = ref or ModelRef()
    # A version number is only unique within one registered model of one store: on a shared MLflow server,
    # workspaces with their own model names all have a version 1, and a long-lived worker serves them all.
    store = (ws.tracking_uri(config.forecast.tracking_uri), config.forecast.registered_model)
    if ref.file is not None:
        key = (ref.file, str(os.stat(ref.file).st_mtime_ns))
    elif ref.version is not None:
        key = (*store, ref.version)
    else:
        version = registry.champion_version(ws, config)
        if version is None:
            raise RuntimeError(f"{ws.home}: no champion model registered; run `cashcast train` first")
        key, ref = (*store, str(version.version)), ModelRef(version=str(version.version))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_model(ws, config, ref)
            while len(_cache) > CACHED_MODELS:
                _cache.popitem(last=False)
        _cache.move_to_end(key)
        return _cache[key]
