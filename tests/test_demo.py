"""python -m dropnorm.demo: a one-epoch run end to end (table, figure, finite
numbers, reproducibility) and the claims on the default settings. Needs the
[demo] extra; skipped without it."""

import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from dropnorm import demo  # noqa: E402

PER_EPOCH = ("train_loss", "train_acc", "train_eval_loss", "test_loss", "test_acc")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_one_epoch_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "figures" / "demo.png"  # the folder does not exist yet
    assert demo.main(["--epochs", "1", "--seed", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for label, _, _ in demo.RUNS.values():
        assert label in text
    for heading in ("training loss", "test accuracy, by epoch", "after epoch 1",
                    "gradient norm", "percentile", "claims"):
        assert heading in text
    assert f"figure written to {out}" in text
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert out.stat().st_size > 20_000  # six panels, not an empty canvas


def test_no_plot_writes_no_figure(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert demo.main(["--epochs", "1", "--no-plot", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "claims" in text
    assert "figure written" not in text
    assert not out.exists()


def test_one_epoch_numbers_are_finite():
    results = demo.run(epochs=1)
    assert list(results["runs"]) == list(demo.RUNS)
    n_layers = len(demo.HIDDEN) + 1
    for key, r in results["runs"].items():
        for name in PER_EPOCH:
            values = np.asarray(r[name], dtype=np.float64)
            assert values.shape == (1,), (key, name)
            assert np.isfinite(values).all(), (key, name)
        for name in ("train_acc", "test_acc"):
            assert 0.0 <= r[name][0] <= 1.0
        grads = np.asarray(r["grad_norm"])
        assert grads.shape == (1, n_layers)
        assert np.isfinite(grads).all() and (grads > 0).all(), key
        pcts = np.asarray(r["preact_percentiles"])
        assert pcts.shape == (2, 3)  # initialisation and epoch 1
        assert np.isfinite(pcts).all()
        assert (np.diff(pcts, axis=1) >= 0).all()  # 15th <= 50th <= 85th
    for claim in results["claims"]:
        assert claim["holds"] in (True, False, None)
        assert claim["claim"] and claim["evidence"]
    text = demo.format_table(results)
    assert not re.search(r"\b(nan|inf)\b", text, re.IGNORECASE), text


def test_same_seed_same_numbers():
    a = demo.run(epochs=2, seed=5, runs=("bn+dropout",))["runs"]["bn+dropout"]
    b = demo.run(epochs=2, seed=5, runs=("bn+dropout",))["runs"]["bn+dropout"]
    c = demo.run(epochs=2, seed=6, runs=("bn+dropout",))["runs"]["bn+dropout"]
    for name in (*PER_EPOCH, "grad_norm", "preact_percentiles"):
        assert a[name] == b[name], name
    assert a["train_loss"] != c["train_loss"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="epochs"):
        demo.run(epochs=0)
    with pytest.raises(ValueError, match="runs"):
        demo.run(epochs=1, runs=("resnet",))
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])


def test_runs_as_a_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dropnorm.demo", "--epochs", "1", "--no-plot"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "claims" in proc.stdout


def test_default_run_supports_its_claims():
    """The headline on the default settings (no timing): batch norm's training
    loss after the default epochs is lower than the plain network's, and every
    verdict the default run prints (the README shows them) is 'yes'."""
    results = demo.run()
    assert results["config"]["epochs"] == demo.EPOCHS
    plain, bn = results["runs"]["plain"], results["runs"]["bn"]
    assert bn["train_loss"][-1] < plain["train_loss"][-1]
    assert bn["train_loss"][-1] < 0.1 * plain["train_loss"][-1]  # not a near thing
    assert bn["test_acc"][-1] > 0.85 > 0.2 > plain["test_acc"][-1]
    g_plain = np.mean(plain["grad_norm"], axis=0)
    g_bn = np.mean(bn["grad_norm"], axis=0)
    assert g_plain[0] < 0.01 * g_plain[-2]  # vanishing towards the input
    assert g_bn[0] > 0.1 * g_bn[-2]  # not with batch norm
    verdicts = {c["claim"]: c["holds"] for c in results["claims"]}
    assert len(verdicts) == 6
    assert all(v for v in verdicts.values() if v is not None), verdicts
    assert list(verdicts.values()).count(None) == 1  # plain -> dropout: plain never learns
