"""The Ray engine of `neuroscope batch`: Ray Data `map_batches` over a stateful actor class
holding one Explainer per worker, so the model loads once per worker, not per image.

`address` joins a running cluster (``ray.init(address=...)``; the output folder must be
on a file system every node sees); without it a local Ray of its own with `workers` CPUs
starts on the loopback interface and stops at the end (also beside a running `ray start`
cluster, which `--address auto` joins). Each actor asks for one GPU share when the
cluster has GPUs. The actors run `work.run_chunk`, the very code of the local engine,
so both engines give the same rows and maps.
"""
from __future__ import annotations

import json
import os
import re
import socket
from typing import Iterator

from .work import COLUMNS, LABEL_COLUMNS, Settings, run_chunk, schema

RECORD_KEYS = ("image", "path", "class", "region", "contrast", "todo")


class ExplainActor:
    """One Explainer per Ray worker; called with a pyarrow batch of records."""

    def __init__(self, settings: Settings):
        import os
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.settings = settings
        self.ex = settings.explainer()

    def __call__(self, batch):
        import pyarrow as pa
        rows = []
        for item in batch.to_pylist():          # one item = one chunk, as the local engine cuts them
            rows += run_chunk(self.ex, json.loads(item["records"]), self.settings)
            self.ex.clear_caches()
        labels = bool(self.settings.labels)
        columns = COLUMNS + (LABEL_COLUMNS if labels else ())
        return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema(labels))


def start_local(cpus: int) -> None:
    """A local Ray of our own (also beside a running `ray start` cluster) with `cpus` CPUs,
    on the loopback interface, without dashboard, usage stats or worker output on the driver."""
    import ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=max(1, cpus), include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)


def _probe(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that nothing answers on is a one-line error in
    seconds: `ray.init` waits on an unreachable GCS for minutes. "auto" and other forms
    are left to Ray."""
    from ..cli_args import CliError
    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d{1,5})", address.strip())
    if m is None:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or (f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else type(exc).__name__)
        raise CliError(f"cannot reach the Ray cluster at {address}: {why}") from None


def _last_line(exc: Exception) -> str:
    """The last line of Ray's error text, one line (a worker's traceback ends with its exception)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in str(getattr(exc, "error_msg", "") or exc).splitlines()]
    lines = [l for l in lines if l and not l.startswith(("File ", "^", "Traceback"))]
    return re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", lines[-1])[:300] if lines else type(exc).__name__


def run_ray(settings: Settings, records: list[dict], *, workers: int = 1, address: str | None = None,
            chunk: int = 8) -> Iterator[list[dict]]:
    """Rows as the workers finish them (a list per finished batch)."""
    try:
        import ray
    except ModuleNotFoundError:
        from ..cli_args import CliError
        raise CliError("--engine ray needs Ray (pip install 'neuroscope[ray]' or ray==2.60.0)") from None
    started = False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        if address:
            _probe(address)
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, ray.exceptions.RayError) as exc:
                from ..cli_args import CliError
                why = _last_line(exc.__cause__ or exc)
                raise CliError(f"cannot join the Ray cluster at {address}: {why}") from None
        else:
            start_local(workers)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        gpus = ray.cluster_resources().get("GPU", 0)
        per_actor = {"num_gpus": min(1.0, gpus / max(workers, 1))} if gpus else {}
        # Whole chunks travel as items: a worker batches exactly the images the local
        # engine would (the same model batches, so the same floats).
        chunks = [json.dumps([{k: r[k] for k in RECORD_KEYS if r.get(k) is not None} for r in records[i:i + chunk]])
                  for i in range(0, len(records), chunk)]
        ds = ray.data.from_items([{"records": c} for c in chunks], override_num_blocks=len(chunks))
        ds = ds.map_batches(ExplainActor, fn_constructor_args=(settings,), batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=max(1, workers)), num_cpus=1, **per_actor)
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                yield batch.to_pylist()
        except ray.exceptions.RayActorError as exc:
            if not getattr(exc, "actor_init_failed", False):
                raise
            from ..errors import BadModel    # the workers load the model (a cluster node may lack its files)
            raise BadModel(f"a Ray worker could not load {settings.model}: {_last_line(exc)}") from None
    finally:
        if started:
            ray.shutdown()
