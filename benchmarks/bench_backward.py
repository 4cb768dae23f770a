"""Forward + backward of attention: attnx (attend with return_lse, then
attend_backward) against torch's scaled_dot_product_attention + autograd, on
the CPU, one thread each, measured side by side in one run; then the peak
extra memory of the backward at L=8192 (each measurement in its own process).

    python benchmarks/bench_backward.py [--repeat N] [--full-memory]

Times are the best of --repeat runs, attnx and torch interleaved (best-of is
the least disturbed by other load on the machine; the load average is
printed). Memory is the growth of the
peak resident set size during the backward call alone: the peak is reset
after the forward (Linux /proc/self/clear_refs) and read from VmHWM. torch's
math path keeps L x L matrices per head; by default it is measured at H=1 and
scaled to H=8 (stated as such), since H=8 in float64 needs ~13 GB; pass
--full-memory to measure H=8 directly.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def best_of(fns, repeat):
    """Best time of each function, the runs interleaved (a, b, a, b, ...) so a
    change in the machine's load falls on both alike."""
    for fn in fns:
        fn()                               # warm up (first-touch, thread pools)
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def time_rows(repeat):
    import torch

    import attnx
    torch.set_num_threads(1)
    F = torch.nn.functional
    B, H, L, d = 8, 8, 512, 64
    rng = np.random.default_rng(0)
    rows = []
    for dtype in (np.float64, np.float32):
        q, k, v, g = (rng.standard_normal((B, H, L, d)).astype(dtype) for _ in range(4))
        tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
        tg = torch.from_numpy(g)
        for causal in (False, True):
            scale = 1 / np.sqrt(d)

            def run_attnx():
                out, lse = attnx.attend(q, k, v, scale=scale, causal=causal, return_lse=True,
                                        num_threads=1)
                attnx.attend_backward(g, q, k, v, out, lse, scale=scale, causal=causal,
                                      num_threads=1)

            def run_torch():
                tq.grad = tk.grad = tv.grad = None
                out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                out.backward(tg)

            ta, tt = best_of((run_attnx, run_torch), repeat)
            rows.append((np.dtype(dtype).name, "causal" if causal else "full", ta, tt))
    return rows


def _rss_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _rss_now_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def memory_child(which, H, L, d):
    """Runs in a subprocess: prints JSON with the backward's peak extra RSS."""
    import gc
    # a small run first, so that loading code and first-call setup are not counted
    _prepare(which, 1, 64, d)[0]()
    backward = _prepare(which, H, L, d)[0]
    gc.collect()
    before = _rss_now_kib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                      # reset VmHWM to the current RSS
    grads = backward()
    peak = _rss_hwm_kib()
    grad_bytes = sum(x.numel() * x.element_size() if hasattr(x, "numel") else x.nbytes
                     for x in grads)
    print(json.dumps({"extra_mib": (peak - before) / 1024,
                      "grads_mib": grad_bytes / 2**20}))


def _prepare(which, H, L, d):
    """The forward done; returns (backward, keep-alive state)."""
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((1, H, L, d)) for _ in range(4))
    if which == "attnx":
        import attnx
        out, lse = attnx.attend(q, k, v, scale=0.125, return_lse=True, num_threads=1)

        def backward():
            return attnx.attend_backward(g, q, k, v, out, lse, scale=0.125, num_threads=1)
    else:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        torch.set_num_threads(1)
        backend = SDPBackend.MATH if which == "torch-math" else SDPBackend.FLASH_ATTENTION
        tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
        with sdpa_kernel(backend):
            out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=0.125)
        tg = torch.from_numpy(g)

        def backward():
            out.backward(tg)
            return tq.grad, tk.grad, tv.grad
    return backward, None


def memory_row(which, H, L=8192, d=64):
    res = subprocess.run([sys.executable, __file__, "--memory-child", which, str(H), str(L),
                          str(d)], capture_output=True, text=True)
    if res.returncode != 0:
        return None, res.stderr.strip().splitlines()[-1:] or ["failed"]
    return json.loads(res.stdout), None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--full-memory", action="store_true",
                    help="measure torch's math path at H=8 (float64: ~13 GB)")
    ap.add_argument("--skip-memory", action="store_true", help="the timing rows only")
    ap.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        which, H, L, d = args.memory_child
        memory_child(which, int(H), int(L), int(d))
        return 0
    import torch

    import attnx
    from attnx.bench import machine
    print(f"CPU: {machine()}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"attnx {attnx.__version__} ({attnx.simd_level()}), torch {torch.__version__}, "
          f"numpy {np.__version__}; 1 thread each; best of {args.repeat}")
    print()
    print("forward + backward, B8 H8 L512 d64")
    print(f"  {'dtype':8s} {'mask':7s} {'attnx ms':>9s} {'torch ms':>9s} {'torch/attnx':>12s}")
    for dt, mask, ta, tt in time_rows(args.repeat):
        print(f"  {dt:8s} {mask:7s} {ta * 1e3:9.1f} {tt * 1e3:9.1f} {tt / ta:11.2f}x")
    if args.skip_memory:
        return 0
    print()
    print("peak extra memory of the backward, L=8192 d64 float64 (RSS growth during the call;"
          " includes the gradients themselves)")
    rows = [("attnx attend_backward", "attnx", 8, 1),
            ("torch sdpa, flash (CPU default)", "torch-flash", 8, 1)]
    rows.append(("torch sdpa, math path", "torch-math", 8, 1) if args.full_memory
                else ("torch sdpa, math path (H=1 x 8)", "torch-math", 1, 8))
    for label, which, H, mult in rows:
        r, err = memory_row(which, H)
        if r is None:
            print(f"  {label:34s} failed: {err[0]}")
            continue
        print(f"  {label:34s} {r['extra_mib'] * mult:9.1f} MiB  (gradients "
              f"{r['grads_mib'] * mult:.1f} MiB, other {(r['extra_mib'] - r['grads_mib']) * mult:.1f}"
              f" MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
