"""attnx.dask.attend on a LocalCluster: 2 worker processes against 1, and
what the merge costs at 64 key chunks. Ratios come from one run.

Keys and values are float64 (T, d), made chunk by chunk on the workers with
dask.array.random (T = 2**23, d = 64: 4 GiB each, 8 GiB in all), so no
process ever holds them whole. Each worker has one thread (attnx itself then
runs one thread per task: the nanny sets OMP_NUM_THREADS=1, which attnx
follows).

    python benchmarks/bench_dask.py              # T = 2**23, 64 chunks
    python benchmarks/bench_dask.py --T 2**20    # smaller

Figures:
- end to end (generate + attend, nothing kept): 1 worker / 2 workers;
- attend on keys and values already in the workers' memory (persisted),
  best of --repeat: 1 worker / 2 workers;
- merge overhead at 64 chunks: the compute time of the merge tasks over that
  of the attention tasks (from the scheduler's task stream), and the wall
  time of the whole graph over that of the same 64 partial results computed
  with no merge.
"""
import argparse
import os
import subprocess
import time

import numpy as np


def cpu_model():
    try:
        return subprocess.run(["grep", "-m1", "model name", "/proc/cpuinfo"], capture_output=True,
                              text=True).stdout.split(":", 1)[1].strip()
    except (OSError, IndexError):
        return "unknown"


def load():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def best(f, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def run(n_workers, T, d, chunk, repeat):
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, get_task_stream, wait

    import attnx
    import attnx.dask

    res = {}
    q = np.random.default_rng(1).standard_normal((1, d))
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        def data():
            rng = da.random.default_rng(2026)
            return (rng.random((T, d), chunks=(chunk, d)), rng.random((T, d), chunks=(chunk, d)))

        K, V = data()
        t0 = time.perf_counter()
        ctx_e2e = attnx.dask.attend(q, K, V, scale=d ** -0.5).compute()
        res["e2e"] = time.perf_counter() - t0

        K, V = client.persist(data())
        wait([K, V])
        out = attnx.dask.attend(q, K, V, scale=d ** -0.5)
        res["attend"] = best(lambda: out.compute(), repeat)
        ctx = out.compute()
        assert np.array_equal(ctx, ctx_e2e), "persisted and end-to-end runs differ"
        res["ctx"] = ctx

        # the same 64 partial results with no merge: one delayed attend per chunk
        kb, vb = K.to_delayed().ravel(), V.to_delayed().ravel()
        starts = np.cumsum((0,) + K.chunks[0][:-1])
        parts = [dask.delayed(attnx.attend)(q, k, v, scale=d ** -0.5, return_lse=True,
                                            key_offset=int(s)) for k, v, s in zip(kb, vb, starts)]
        res["partials"] = best(lambda: dask.compute(*parts), repeat)

        with get_task_stream(client) as ts:
            out.compute()
        busy = {"partial": 0.0, "merge": 0.0}
        for t in ts.data:
            name = t["key"][0] if isinstance(t["key"], tuple) else str(t["key"])
            for kind in busy:
                if name.startswith(f"attnx-{kind}"):
                    busy[kind] += sum(s["stop"] - s["start"] for s in t["startstops"]
                                      if s["action"] == "compute")
        res["busy"] = busy
        res["simd"] = client.run(lambda: __import__("attnx").simd_level())
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", default="2**23", help="keys (an expression, default 2**23)")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=64, help="key chunks (default 64)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    T = int(eval(args.T, {}))
    d, chunk = args.d, -(-int(eval(args.T, {})) // args.chunks)
    gib = 2 * T * d * 8 / 2**30
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs)")
    print(f"load before: {load()}")
    print(f"attnx.dask.attend, 1 query, T={T} d={d} float64: K and V {gib:.1f} GiB in "
          f"{-(-T // chunk)} chunks of {chunk} keys")
    r1 = run(1, T, d, chunk, args.repeat)
    r2 = run(2, T, d, chunk, args.repeat)
    assert np.array_equal(r1["ctx"], r2["ctx"]), "1 and 2 workers gave different bits"
    print(f"workers' SIMD level: {sorted(set(r2['simd'].values()))}")
    for name, key in (("generate + attend (end to end)", "e2e"), ("attend on persisted K, V", "attend")):
        print(f"{name:32s} 1 worker {r1[key]:7.2f} s   2 workers {r2[key]:7.2f} s   "
              f"ratio {r1[key] / r2[key]:.2f}x (target >= 1.7x)")
    for n, r in ((1, r1), (2, r2)):
        b = r["busy"]
        print(f"merge at {args.chunks} chunks, {n} worker(s): merge tasks {b['merge'] * 1e3:.2f} ms of "
              f"compute = {b['merge'] / b['partial']:.2%} of the attention tasks' "
              f"{b['partial']:.2f} s; wall time with merge {r['attend']:.3f} s vs without "
              f"{r['partials']:.3f} s = {r['attend'] / r['partials'] - 1:+.1%} (target <= 5%)")
    print("bits: identical on 1 and 2 workers, persisted and end to end")
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
