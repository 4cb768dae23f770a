"""Attention over a long context on a Dask cluster with attnx.dask.

Two sequences of T keys and values (float64, d = 64) are made chunk by chunk
on the workers (dask.array.random), so no process ever holds them whole; a
decoder query per sequence attends to them, the second sequence only to its
first T/3 keys (key_lengths). Each key chunk is attended on a worker and the
partial results merge in a fixed tree: the same bits on any number of
workers.

    python examples/dask_long_context.py                  # small, checked locally
    python examples/dask_long_context.py --big            # T = 2**23 (8 GiB of K and V)
    python examples/dask_long_context.py --address tcp://scheduler:8786   # a real cluster

Without --address it starts a LocalCluster with 2 worker processes. With it,
the same code runs on any cluster: a `dask scheduler` / `dask worker` pair,
dask-jobqueue (SLURM, PBS, ...) or dask-kubernetes; the workers need attnx
installed (pip install "attnx[dask]").
"""
import argparse
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="scheduler address of a running cluster")
    ap.add_argument("--workers", type=int, default=2, help="local worker processes (no --address)")
    ap.add_argument("--T", type=int, default=2**16, help="keys per sequence")
    ap.add_argument("--chunk", type=int, default=None, help="keys per chunk (default T/16)")
    ap.add_argument("--big", action="store_true", help="T = 2**23, chunks of 2**17")
    args = ap.parse_args(argv)
    if args.big:
        args.T, args.chunk = 2**23, 2**17
    T, d = args.T, 64
    chunk = args.chunk or max(1, T // 16)

    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    import attnx
    import attnx.dask

    if args.address:
        client, cluster = Client(args.address), None
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        rng = da.random.default_rng(2026)
        # (batch, T, d): one sequence per batch entry, chunked along the batch and T
        K = rng.standard_normal((2, T, d), chunks=(1, chunk, d))
        V = rng.standard_normal((2, T, d), chunks=(1, chunk, d))
        q = np.random.default_rng(1).standard_normal((2, 1, d))
        lengths = np.array([T, T // 3])
        ctx, lse = attnx.dask.attend(q, K, V, scale=d ** -0.5, key_lengths=lengths,
                                     return_lse=True)
        t0 = time.perf_counter()
        ctx, lse = dask.compute(ctx, lse)
        dt = time.perf_counter() - t0
        n = len(client.scheduler_info()["workers"])
        print(f"T={T} d={d} chunks of {chunk} ({K.numblocks[1]} per sequence) on {n} workers: "
              f"{dt:.2f} s; context[0, 0, :4] = {ctx[0, 0, :4].round(6)}, lse = {lse[:, 0].round(6)}")
        if T * d * 16 * 2 <= 2**28:   # small: check against attnx.attend on the whole
            Kn, Vn = dask.compute(K, V)
            mask = np.arange(T) < lengths[:, None, None]
            want, want_lse = attnx.attend(q, Kn, Vn, scale=d ** -0.5, mask=mask, return_lse=True)
            err = np.abs(ctx - want).max() / np.abs(want).max()
            print(f"max relative difference from attnx.attend over the whole: {err:.1e}")
            if not err <= 1e-13 or not np.allclose(lse, want_lse, rtol=1e-13):
                raise SystemExit("attnx.dask.attend differs from attnx.attend")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
