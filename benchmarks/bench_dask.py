"""attnx.dask.attend on a LocalCluster: 2 worker processes against 1, and
what the merge costs at 64 key chunks. Ratios come from one run.

Keys and values are float64 (T, d), made chunk by chunk on the workers with
dask.array.random (T = 2**23, d = 64: 4 GiB each, 8 GiB in all), so no
process ever holds them whole. Both runs use the same chunking (so the same
tasks, and the same bits). Each worker process has one thread, and attnx
runs one thread inside a task (the nanny sets OMP_NUM_THREADS=1, which attnx
follows; checked on the workers): 2 workers x 1 thread against 1 worker x 1
thread. Cluster start-up and a first (warm-up) run are not timed; each
figure is the best of --repeat.

    python benchmarks/bench_dask.py              # T = 2**23, 64 chunks
    python benchmarks/bench_dask.py --T 2**21    # smaller

Figures:
- end to end (make the chunks + attend them, nothing kept): 1 worker /
  2 workers. attnx.dask makes each key chunk and its value chunk inside the
  task that attends them, so nothing larger than a (context, lse) partial
  moves between workers: the transfers are counted from the task stream;
- attend on keys and values already in the workers' memory: 1 worker /
  2 workers. They are persisted as each worker would load its shard: key
  chunks [a, b) and value chunks [a, b) on one worker;
- per-task times, from the scheduler's task stream, and the CPU time the
  worker processes used, for both runs. What a task costs more in CPU time
  on 2 workers (memory bandwidth and caches shared with the other worker,
  and with anything else running) bounds the ratio at 2 x (CPU time on 1
  worker) / (CPU time on 2 workers) even with both CPUs free; wall time
  beyond that is CPU the workers did not get (the other load, shown before
  and after, and the average CPUs the workers had);
- merge overhead at 64 chunks: the compute time of the merge tasks over that
  of the attention tasks, and the wall time of the whole graph over that of
  the same 64 partial results computed with no merge.
"""
import argparse
import collections
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


def busy_cpus(seconds=1.0):
    """CPUs busy (0 .. os.cpu_count()) over `seconds`, from /proc/stat: what
    else runs on the machine just before a measurement."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    try:
        a = snap()
        time.sleep(seconds)
        b = snap()
    except OSError:
        return float("nan")
    return (1 - (b[1] - a[1]) / max(1, b[0] - a[0])) * (os.cpu_count() or 1)


def stream_stats(records):
    """Per task kind: count, compute seconds, and the transfers its inputs
    needed (count, seconds); tasks per worker."""
    kinds = collections.defaultdict(lambda: [0, 0.0, 0, 0.0])
    per_worker = collections.Counter()
    for t in records:
        name = t["key"][0] if isinstance(t["key"], tuple) else str(t["key"])
        kind = next((k for k in ("partial", "merge") if name.startswith(f"attnx-{k}")), "other")
        s = kinds[kind]
        for ss in t["startstops"]:
            if ss["action"] == "compute":
                s[0] += 1
                s[1] += ss["stop"] - ss["start"]
            elif ss["action"] == "transfer":
                s[2] += 1
                s[3] += ss["stop"] - ss["start"]
        if kind == "partial":
            per_worker[t["worker"]] += 1
    return dict(kinds), sorted(per_worker.values())


def run(n_workers, T, d, chunk, repeat):
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, get_task_stream, wait

    import attnx
    import attnx.dask

    res = {}
    q = np.random.default_rng(1).standard_normal((1, d))
    scale = d ** -0.5
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(n_workers)
        workers = client.scheduler_info()["workers"].values()
        res["nthreads"] = sorted(w["nthreads"] for w in workers)
        res["omp"] = sorted(set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()))
        res["simd"] = sorted(set(client.run(lambda: __import__("attnx").simd_level()).values()))

        def data():
            rng = da.random.default_rng(2026)
            return (rng.random((T, d), chunks=(chunk, d)), rng.random((T, d), chunks=(chunk, d)))

        def cpu():  # CPU seconds the worker processes have used
            return sum(client.run(lambda: sum(os.times()[:2])).values())

        def timed(x):
            """Best of `repeat` (after one untimed run): wall seconds, the
            workers' CPU seconds and the task stream of that run."""
            x.compute()
            best = (float("inf"), None, None)
            for _ in range(repeat):
                c0 = cpu()
                with get_task_stream(client) as ts:
                    t0 = time.perf_counter()
                    x.compute()
                    dt = time.perf_counter() - t0
                best = min(best, (dt, cpu() - c0, ts.data), key=lambda b: b[0])
            return best

        res["busy_before"] = busy_cpus()
        K, V = data()
        out = attnx.dask.attend(q, K, V, scale=scale)
        res["e2e"], res["e2e_cpu"], stream = timed(out)
        res["e2e_stream"] = stream_stats(stream)
        ctx_e2e = out.compute()

        # the same values, persisted as each worker would load its shard:
        # chunks [a, b) of K and of V on one worker (left to itself, the
        # scheduler puts key chunk j and value chunk j on different workers
        # about half the time, and the attention then waits for 32 MiB)
        ws = sorted(client.scheduler_info()["workers"])
        n = len(K.chunks[0])
        cuts = [sum(K.chunks[0][:i * n // len(ws)]) for i in range(len(ws) + 1)]
        shards = [client.persist([K[a:b], V[a:b]], workers=[w])
                  for w, a, b in zip(ws, cuts, cuts[1:])]
        Kp = da.concatenate([s[0] for s in shards])
        Vp = da.concatenate([s[1] for s in shards])
        wait([Kp, Vp])
        assert Kp.chunks == K.chunks and Vp.chunks == V.chunks
        out = attnx.dask.attend(q, Kp, Vp, scale=scale)
        res["attend"], res["attend_cpu"], stream = timed(out)
        res["attend_stream"] = stream_stats(stream)
        ctx = out.compute()
        assert np.array_equal(ctx, ctx_e2e), "persisted and end-to-end runs differ"
        res["ctx"] = ctx

        # the same 64 partial results with no merge: one delayed attend per chunk
        kb, vb = Kp.to_delayed().ravel(), Vp.to_delayed().ravel()
        starts = np.cumsum((0,) + Kp.chunks[0][:-1])

        def parts():
            """New task keys each time: the cluster may still hold the last
            round's results under the old ones (releases are asynchronous)
            and would hand them back without computing"""
            return [dask.delayed(attnx.attend, pure=False)(q, k, v, scale=scale, return_lse=True,
                                                           key_offset=int(s))
                    for k, v, s in zip(kb, vb, starts)]
        dask.compute(*parts())
        ts = []
        for _ in range(repeat):
            ps = parts()
            t0 = time.perf_counter()
            dask.compute(*ps)
            ts.append(time.perf_counter() - t0)
        res["partials"] = min(ts)
        res["busy_after"] = busy_cpus()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", default="2**23", help="keys (an expression, default 2**23)")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=64, help="key chunks (default 64)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    T = int(eval(args.T, {}))
    d, chunk = args.d, -(-T // args.chunks)
    gib = 2 * T * d * 8 / 2**30
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs)")
    print(f"load before: {load()}")
    print(f"attnx.dask.attend, 1 query, T={T} d={d} float64: K and V {gib:.1f} GiB in "
          f"{-(-T // chunk)} chunks of {chunk} keys; best of {args.repeat} after a warm-up")
    r1 = run(1, T, d, chunk, args.repeat)
    r2 = run(2, T, d, chunk, args.repeat)
    assert np.array_equal(r1["ctx"], r2["ctx"]), "1 and 2 workers gave different bits"
    print(f"workers: threads {r1['nthreads']} and {r2['nthreads']}, OMP_NUM_THREADS "
          f"{r2['omp']}, SIMD level {r2['simd']}")
    print(f"other load (busy CPUs of {os.cpu_count()}) before/after: 1 worker "
          f"{r1['busy_before']:.2f}/{r1['busy_after']:.2f}, 2 workers "
          f"{r2['busy_before']:.2f}/{r2['busy_after']:.2f}")
    for name, key in (("make + attend (end to end)", "e2e"), ("attend on persisted K, V", "attend")):
        print(f"{name:28s} 1 worker {r1[key]:7.2f} s   2 workers {r2[key]:7.2f} s   "
              f"ratio {r1[key] / r2[key]:.2f}x (target >= 1.7x)")
        for n, r in ((1, r1), (2, r2)):
            kinds, split = r[key + "_stream"]
            p = kinds.get("partial", [0, 0.0, 0, 0.0])
            moved = sum(k[2] for k in kinds.values())
            print(f"    {n} worker(s): {p[0]} attend tasks ({'+'.join(map(str, split))} per "
                  f"worker), {p[1] / max(1, p[0]) * 1e3:.1f} ms each, {p[1]:.2f} s in all; "
                  f"{moved} transfers between workers; the workers used {r[key + '_cpu']:.2f} "
                  f"CPU s = {r[key + '_cpu'] / r[key]:.2f} CPUs on average")
        c1, c2 = r1[key + "_cpu"], r2[key + "_cpu"]
        print(f"    the same work took {c2 / c1:.2f}x the CPU time on 2 workers: with 2 CPUs "
              f"free to them, 2 workers could at best be {2 * c1 / c2:.2f}x one worker")
    for n, r in ((1, r1), (2, r2)):
        kinds = r["attend_stream"][0]
        b_merge, b_part = kinds.get("merge", [0, 0.0])[1], kinds["partial"][1]
        print(f"merge at {args.chunks} chunks, {n} worker(s): merge tasks {b_merge * 1e3:.2f} ms of "
              f"compute = {b_merge / b_part:.2%} of the attention tasks' "
              f"{b_part:.2f} s; wall time with merge {r['attend']:.3f} s vs without "
              f"{r['partials']:.3f} s = {r['attend'] / r['partials'] - 1:+.1%} (target <= 5%)")
    print("bits: identical on 1 and 2 workers, persisted and end to end")
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
