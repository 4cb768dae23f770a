"""Peak extra memory of a causal prefill: attnx's forward against torch sdpa.

One call of causal attention over B=1, H heads, L query rows and L keys
(float64, d=64 by default) per L in a doubling ladder, each in a fresh
subprocess: the process's resident set before the call, then its high-water
mark after it (Linux: /proc/self/status VmHWM, reset by /proc/self/clear_refs),
so the figure is what the call itself allocated, the output included. An
attention that keeps no L x L buffer grows by O(L): the output (H L d
elements) and its scratch; one that materialises the scores grows by O(L^2).

    python benchmarks/bench_prefill_memory.py [--L 4096 8192 16384] [--H 8]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(which, H, L, d, threads):
    """Runs in a subprocess: prints JSON with the call's peak extra RSS."""
    import gc
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, H, L, d)) for _ in range(3))
    if which == "attnx":
        import attnx

        def call(q, k, v):
            return attnx.attend(q, k, v, scale=d ** -0.5, causal=True, num_threads=threads)
    else:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        torch.set_num_threads(threads)
        backend = SDPBackend.MATH if which == "torch-math" else SDPBackend.FLASH_ATTENTION
        q, k, v = (torch.from_numpy(a) for a in (q, k, v))

        def call(q, k, v):
            with sdpa_kernel(backend), torch.no_grad():
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    call(q[:, :, :64], k[:, :, :64], v[:, :, :64])     # code loaded, first-call setup done
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                     # VmHWM := VmRSS
    out = call(q, k, v)
    peak = _status_kib("VmHWM")
    out_bytes = out.nbytes if hasattr(out, "nbytes") else out.numel() * out.element_size()
    print(json.dumps({"extra_mib": (peak - before) / 1024, "out_mib": out_bytes / 2**20}))


def measure(which, H, L, d, threads):
    res = subprocess.run([sys.executable, __file__, "--child", which, str(H), str(L), str(d),
                          str(threads)], capture_output=True, text=True)
    if res.returncode != 0:
        return None, (res.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(res.stdout), None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--math-max-L", type=int, default=8192,
                    help="largest L for torch's math path (float64 L=16384, H=8: 16 GiB of scores)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        which, H, L, d, threads = args.child
        child(which, int(H), int(L), int(d), int(threads))
        return 0
    from attnx.bench import machine
    print(f"CPU: {machine()}")
    print(f"causal prefill, B=1 H={args.H} d={args.d} float64, {args.threads} thread(s): peak RSS "
          f"growth during one call (the output included)")
    kinds = [("attnx attend", "attnx"), ("torch sdpa, flash", "torch-flash"),
             ("torch sdpa, math path", "torch-math")]
    try:
        import torch  # noqa: F401
    except ImportError:
        kinds = kinds[:1]
    print(f"  {'L':>6}  {'output':>10}  " + "  ".join(f"{name:>22}" for name, _ in kinds))
    for L in args.L:
        cells, out_mib = [], None
        for _, which in kinds:
            if which == "torch-math" and L > args.math_max_L:
                cells.append("(skipped)")
                continue
            r, err = measure(which, args.H, L, args.d, args.threads)
            if r is None:
                cells.append(f"failed: {err[:40]}")
                continue
            out_mib = r["out_mib"]
            cells.append(f"{r['extra_mib']:.1f} MiB")
        print(f"  {L:>6}  {out_mib or 0:>6.1f} MiB  " + "  ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
