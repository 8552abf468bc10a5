"""python -m dropnorm.bench: every kernel against a memcpy of the same bytes.

The kernels are memory-bound, so the yardstick is a memcpy of the input
tensor (one read + one write) split over the same threads, timed in the same
process and interleaved with the kernel. For each kernel x shape x layout x
dtype the table gives the median time, the effective bandwidth (the least
traffic the kernel must move, divided by its time), the ratio to the memcpy
(the median, over the repeats, of the kernel's time over the memcpy timed just
before it), the ratio to the kernel's least traffic (in memcpys), and, when
PyTorch is installed, PyTorch's time with the same thread count and dropnorm's
speedup (both called without ``out=``, paired the same way).

    python -m dropnorm.bench            # the full table
    python -m dropnorm.bench --quick    # float32, fewer shapes and repeats (< 1 min)
    python -m dropnorm.bench --json out.json
"""

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

import dropnorm
from dropnorm._bench import parallel_copy

# least traffic of each kernel in memcpys (1 memcpy = read x + write x)
LEAST_TRAFFIC = {
    "bn_infer": 1.0,      # read x, write y
    "bn_train": 1.5,      # read x twice, write y
    "bn_backward": 2.5,   # read x and dy twice, write dx
    "dropout_fwd": 1.0,   # read x, write y (+ 1 bit per element of mask)
    "dropout_bwd": 1.0,   # read dy, write dx; the mask is regenerated
}

MAIN_SHAPE = (64, 64, 56, 56)
SMALL_SHAPES = [(256, 2048), (32, 256, 14, 14), (32, 3, 224, 224), (1, 64, 112, 112)]


def _channels_last(shape):
    return (shape[0],) + tuple(shape[2:]) + (shape[1],)


class _Case:
    """Arrays and callables of one kernel x shape x layout x dtype."""

    def __init__(self, kernel, shape, layout, dtype, torch):
        rng = np.random.default_rng(0)
        axis = 1 if layout == "NCHW" else -1
        c = shape[1]
        full = shape if layout == "NCHW" else _channels_last(shape)
        x = rng.standard_normal(full, dtype=np.float32).astype(dtype)
        dy = rng.standard_normal(full, dtype=np.float32).astype(dtype)
        out = np.empty_like(x)
        w = np.ones(c, dtype)
        b = np.zeros(c, dtype)
        rm = np.zeros(c, dtype)
        rv = np.ones(c, dtype)
        _, mean, invstd = dropnorm.batch_norm_train(x, axis=axis)
        self.nbytes = x.nbytes
        self.x, self.out = x, out
        p = 0.5
        if kernel == "bn_infer":
            self.run = lambda: dropnorm.batch_norm_infer(x, rm, rv, w, b, axis=axis, out=out)
            self.run_alloc = lambda: dropnorm.batch_norm_infer(x, rm, rv, w, b, axis=axis)
        elif kernel == "bn_train":
            self.run = lambda: dropnorm.batch_norm_train(x, w, b, rm, rv, axis=axis, out=out)
            self.run_alloc = lambda: dropnorm.batch_norm_train(x, w, b, rm, rv, axis=axis)
        elif kernel == "bn_backward":
            self.run = lambda: dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=axis,
                                                            out=out)
            self.run_alloc = lambda: dropnorm.batch_norm_backward(dy, x, mean, invstd, w,
                                                                  axis=axis)
        elif kernel == "dropout_fwd":
            self.run = lambda: dropnorm.dropout(x, p, seed=1, out=out, return_mask=True)
            self.run_alloc = lambda: dropnorm.dropout(x, p, seed=1, return_mask=True)
        elif kernel == "dropout_bwd":
            self.run = lambda: dropnorm.dropout_backward(dy, p, seed=1, out=out)
            self.run_alloc = lambda: dropnorm.dropout_backward(dy, p, seed=1)
        else:
            raise ValueError(f"kernel: unknown {kernel!r}")
        self.torch_run = None
        if torch is not None:
            self.torch_run = _torch_callable(torch, kernel, x, dy, layout, p)


def _torch_callable(torch, kernel, x, dy, layout, p):
    def tensor(a):
        t = torch.from_numpy(a)
        return t.permute(0, a.ndim - 1, *range(1, a.ndim - 1)) if layout == "NHWC" else t

    xt, dyt = tensor(x), tensor(dy)
    c = xt.shape[1]
    w = torch.ones(c, dtype=xt.dtype)
    b = torch.zeros(c, dtype=xt.dtype)
    rm = torch.zeros(c, dtype=xt.dtype)
    rv = torch.ones(c, dtype=xt.dtype)
    F = torch.nn.functional
    if kernel == "bn_infer":
        return lambda: F.batch_norm(xt, rm, rv, w, b, training=False)
    if kernel == "bn_train":
        return lambda: F.batch_norm(xt, rm, rv, w, b, training=True)
    if kernel == "bn_backward":
        _, mean, invstd = torch.native_batch_norm(xt, w, b, rm, rv, True, 0.1, 1e-5)
        return lambda: torch.ops.aten.native_batch_norm_backward(
            dyt, xt, w, rm, rv, mean, invstd, True, 1e-5, [True, True, True])
    if kernel == "dropout_fwd":
        return lambda: torch.native_dropout(xt, p, True)
    if kernel == "dropout_bwd":
        _, mask = torch.native_dropout(xt, p, True)
        return lambda: torch.ops.aten.native_dropout_backward(dyt, mask, 1.0 / (1.0 - p))
    raise ValueError(kernel)


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(case, threads, repeats):
    """Median seconds of memcpy, kernel (out=), kernel (allocating), torch,
    and the medians of the ratios within a repeat (kernel / the memcpy just
    before it, torch / allocating kernel just before it): the machine's
    load changes over seconds, and a ratio of two runs a few milliseconds
    apart sees the same load."""
    src = case.x.reshape(-1).view(np.uint8)
    dst = case.out.reshape(-1).view(np.uint8)

    def copy():
        parallel_copy(dst, src, threads)

    runs = [copy, case.run, case.run_alloc] + ([case.torch_run] if case.torch_run else [])
    # warm up: page faults, thread pools, and the kernel's first huge pages
    # for fresh outputs (the first few large allocations of a process can
    # take ten times longer while it compacts memory)
    for _ in range(3):
        for fn in runs:
            fn()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for i, fn in enumerate(runs):
            times[i].append(_time(fn))
    med = [statistics.median(t) for t in times]
    return {
        "memcpy_s": med[0],
        "time_s": med[1],
        "alloc_time_s": med[2],
        "torch_s": med[3] if case.torch_run else None,
        "x_memcpy": statistics.median(k / c for k, c in zip(times[1], times[0])),
        "speedup": (statistics.median(t / a for t, a in zip(times[3], times[2]))
                    if case.torch_run else None),
    }


def _cases(quick):
    dtypes = [np.float32] if quick else [np.float32, np.float64]
    shapes = [MAIN_SHAPE] + (SMALL_SHAPES[:2] if quick else SMALL_SHAPES)
    for shape in shapes:
        layouts = ["NCHW"] if len(shape) == 2 else ["NCHW", "NHWC"]
        for dtype in dtypes:
            for layout in layouts:
                for kernel in LEAST_TRAFFIC:
                    yield kernel, shape, layout, dtype


def _settle_allocator(shape, rounds=3, live=8):
    """Allocates and touches `live` float64 arrays of the main shape at once,
    frees them, a few times.

    NumPy asks for huge pages for large arrays; the first ones that a process
    touches can wait for the kernel to compact memory (ten times the usual
    page-fault time here), later ones reuse what was freed. Settling that
    once, up front, for as much memory as a case holds, keeps it out of
    whichever case happens to run first; a long-running program is in the
    settled state."""
    for _ in range(rounds):
        arrays = [np.ones(shape, np.float64) for _ in range(live)]
        del arrays


def run(quick=False, repeats=None, torch_threads=True, progress=True):
    """Measure every case; returns a list of row dicts."""
    try:
        import torch
    except ImportError:
        torch = None
    threads = dropnorm.get_max_threads()
    if torch is not None and torch_threads:
        torch.set_num_threads(threads)
    repeats = repeats or (5 if quick else 11)
    _settle_allocator(MAIN_SHAPE)
    rows = []
    cases = list(_cases(quick))
    for i, (kernel, shape, layout, dtype) in enumerate(cases):
        label = f"{kernel} {layout} {np.dtype(dtype).name} {shape}"
        if progress:
            print(f"\r[{i + 1}/{len(cases)}] {label:<60}", end="", file=sys.stderr, flush=True)
        case = _Case(kernel, shape, layout, dtype, torch)
        m = measure(case, threads, repeats)
        least = LEAST_TRAFFIC[kernel]
        ratio = m["x_memcpy"]
        row = {
            "kernel": kernel,
            "layout": layout,
            "dtype": np.dtype(dtype).name,
            "shape": list(shape),
            "threads": threads,
            "bytes": case.nbytes,
            "time_ms": m["time_s"] * 1e3,
            "memcpy_ms": m["memcpy_s"] * 1e3,
            "gb_per_s": least * 2 * case.nbytes / m["time_s"] / 1e9,
            "x_memcpy": ratio,
            "x_least": ratio / least,
            "alloc_time_ms": m["alloc_time_s"] * 1e3,
            "torch_ms": None if m["torch_s"] is None else m["torch_s"] * 1e3,
            "speedup_vs_torch": m["speedup"],
        }
        rows.append(row)
        del case
    if progress:
        print("\r" + " " * 80 + "\r", end="", file=sys.stderr, flush=True)
    return rows


def format_table(rows):
    head = ("kernel", "layout", "dtype", "shape", "ms", "GB/s", "x memcpy", "x least",
            "torch ms", "speedup")
    lines = []
    for r in rows:
        torch_ms = "-" if r["torch_ms"] is None else f"{r['torch_ms']:.2f}"
        speed = "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.1f}x"
        lines.append((r["kernel"], r["layout"], r["dtype"], "x".join(map(str, r["shape"])),
                      f"{r['time_ms']:.2f}", f"{r['gb_per_s']:.1f}", f"{r['x_memcpy']:.2f}",
                      f"{r['x_least']:.2f}", torch_ms, speed))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |"
            for line in lines]
    return "\n".join(out)


def describe_machine():
    info = dropnorm.build_info()
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"machine": platform.machine(), "processor": _cpu_name(), "python":
            platform.python_version(), "numpy": np.__version__, "torch": torch_version,
            **info}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dropnorm.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="float32 only, fewer shapes and repeats (under a minute)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the rows and the machine description as JSON")
    args = parser.parse_args(argv)
    machine = describe_machine()
    print("dropnorm " + dropnorm.__version__ + ": " + ", ".join(
        f"{k}={v}" for k, v in machine.items() if k != "version"))
    rows = run(quick=args.quick, repeats=args.repeats)
    print(format_table(rows))
    print("ms: median time with out=; x memcpy: median of (time / a memcpy of x's bytes "
          "on the same threads, timed just before); x least: that / the kernel's least "
          "traffic in memcpys; torch ms and speedup: PyTorch vs dropnorm, both allocating "
          "their outputs.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
