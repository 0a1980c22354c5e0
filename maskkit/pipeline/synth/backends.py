"""Synth execution backends: joblib processes (local), Dask (``distributed``) or Ray, results in order."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

from maskkit.pipeline.runner import auto_workers
from maskkit.pipeline.synth.config import SynthConfig, SynthError
from maskkit.pipeline.synth.plan import Chunk, ChunkResult
from maskkit.pipeline.synth.worker import process_chunk


@contextmanager
def _backend(cfg: SynthConfig, files: int | None = None, chunks: int | None = None):
    """Yield ``n_jobs`` for joblib inside the configured backend context (``files``/``chunks``:
    the work left, for ``--jobs 0``; see :func:`auto_workers`)."""
    import joblib

    if cfg.backend == "local":
        if cfg.jobs > 0:
            yield cfg.jobs
        elif files is None:
            yield os.cpu_count() or 1
        else:
            yield auto_workers(files, chunks if chunks is not None else files)
        return
    if cfg.backend == "dask":
        try:
            from distributed import Client
        except ImportError as exc:
            raise SynthError("--backend dask needs the 'distributed' package: pip install 'maskkit[scale]'") from exc
        import logging

        # distributed logs its cluster's start and stop at INFO (its own logger levels); they are no
        # progress: warnings and errors only while the run uses the cluster, as before after it
        dlog = logging.getLogger("distributed")
        level = dlog.level
        dlog.setLevel(logging.WARNING)
        try:
            if cfg.address:
                client = Client(cfg.address)
                own_cluster = None
            else:
                from distributed import LocalCluster

                own_cluster = LocalCluster(n_workers=max(1, cfg.jobs if cfg.jobs > 0 else os.cpu_count() or 1),
                                           threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=None, silence_logs=logging.WARNING)
                client = Client(own_cluster)
            try:
                with joblib.parallel_config(backend="dask"):
                    yield -1
            finally:
                client.close()
                if own_cluster is not None:
                    own_cluster.close()
        finally:
            dlog.setLevel(level)
        return
    if cfg.backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError as exc:
            raise SynthError("--backend ray needs Ray: pip install 'ray[default]' (not installed here)") from exc
        if not ray.is_initialized():
            ray.init(address=cfg.address or None)
        register_ray()
        with joblib.parallel_config(backend="ray"):
            yield -1
        return
    raise SynthError(f"unknown backend {cfg.backend!r}")


def _results(chunks: list[Chunk], cfg: SynthConfig, n_jobs: int,
             style_offset: Callable[[], int] | None = None) -> Iterator[ChunkResult]:
    """Chunk results in chunk order, computed in parallel with bounded look-ahead.

    ``style_offset``: the driver's running leftover-style offset, read when the next chunk is
    due. In one process (``n_jobs == 1``, local) a chunk starts only after the driver took the
    one before, so the offset is known and only its variant is rendered (the same bytes as the
    variant :meth:`ChunkResult.pick` keeps; the other ``K - 1`` leftover renders are saved)."""
    from joblib import Parallel, delayed

    if n_jobs == 1 and cfg.backend == "local":
        for c in chunks:
            yield process_chunk(c, cfg, None if style_offset is None else style_offset())
        return
    local = {}
    if cfg.backend == "local":  # Ctrl-C: the driver stops the pool and says what is kept; workers stay silent
        from maskkit.util.outcome import quiet_pool_tracker, worker_ignores_interrupts

        quiet_pool_tracker()  # and the pool's resource tracker cleaning up after a stopped run
        local = {"backend": "loky", "initializer": worker_ignores_interrupts}
    par = Parallel(n_jobs=n_jobs, return_as="generator", pre_dispatch="2*n_jobs", batch_size=1, **local)
    yield from par(delayed(process_chunk)(c, cfg) for c in chunks)
