"""python -m dropnorm.demo: short runs end to end (table, figure, finite
numbers, reproducibility, argument checks), the dropout part's claims on
fewer seeds and epochs, and every claim of the default run. Needs the [demo]
extra; skipped without it."""

import math
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import dropnorm  # noqa: E402
from dropnorm import demo  # noqa: E402

PER_EPOCH = ("train_loss", "train_acc", "train_eval_loss", "test_loss", "test_acc")
PER_EVALUATION = ("train_error", "train_loss", "test_error", "test_loss")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# a short run of both parts: 1 batch-norm epoch; 2 dropout epochs on 1 seed
SHORT = ["--epochs", "1", "--dropout-epochs", "2", "--seeds", "1"]


def short_run(**kwargs):
    args = {"epochs": 1, "dropout_epochs": 3, "seeds": 2, "eval_every": 1, "mc_samples": 4}
    args.update(kwargs)
    return demo.run(**args)


def test_short_run_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert demo.main([*SHORT, "--seed", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for label, *_ in demo.RUNS.values():
        assert label in text
    for heading in ("BATCH NORM", "test accuracy (inference mode), by epoch", "after epoch 1",
                    "gradient norm",
                    "percentile", "DROPOUT", "test error (inference mode) by epoch",
                    "each seed", "model averaging", "classic vs inverted", "claims"):
        assert heading in text, heading
    assert "[n/a]" not in text
    assert f"figure written to {out}" in text
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert out.stat().st_size > 50_000  # two parts of six panels, not an empty canvas


def test_one_part_only(tmp_path, capsys):
    assert demo.main([*SHORT, "--part", "dropout", "--out", str(tmp_path / "d.png")]) == 0
    text = capsys.readouterr().out
    assert "DROPOUT" in text and "BATCH NORM" not in text
    assert (tmp_path / "d.png").read_bytes().startswith(PNG_SIGNATURE)
    assert demo.main([*SHORT, "--part", "batchnorm", "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "BATCH NORM" in text and "DROPOUT" not in text


def test_no_plot_writes_no_figure(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert demo.main([*SHORT, "--no-plot", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "claims" in text
    assert "figure written" not in text
    assert not out.exists()


def test_short_run_numbers_are_finite():
    results = short_run()
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

    d = results["dropout"]
    assert d["config"]["seeds"] == [0, 1]
    for key in ("none", "dropout"):
        assert [r["seed"] for r in d["nets"][key]] == [0, 1]
        for r in d["nets"][key]:
            assert r["epochs"] == [1, 2, 3]
            assert len(r["batch_loss"]) == 3
            for name in PER_EVALUATION:
                values = np.asarray(r[name])
                assert values.shape == (3,) and np.isfinite(values).all(), (key, name)
    av = d["averaging"]
    assert av["ks"] == [1, 2] and av["sets"] == [4, 2]
    for mean in ("arithmetic", "geometric"):
        assert np.isfinite(av[mean]["kl"]).all() and min(av[mean]["kl"]) >= 0
        assert all(0 <= a <= 1 for a in av[mean]["agreement"])
    # a single sampled network: both means are its own distribution
    assert av["arithmetic"]["kl"][0] == pytest.approx(av["geometric"]["kl"][0], rel=1e-9)
    for claim in results["claims"]:
        assert claim["holds"] in (True, False)
        assert claim["part"] in ("batch norm", "dropout")
        assert claim["claim"] and claim["evidence"]
    text = demo.format_table(results)
    assert not re.search(r"\b(nan|inf)\b", text, re.IGNORECASE), text


def test_fused_network_is_batch_norm_then_relu():
    """The demo's BN+ReLU network (one BatchNorm1d(activation="relu") per
    hidden layer) trains bit for bit as the same network with separate
    BatchNorm1d and np.maximum layers: logits, gradients and weights after
    three SGD steps, and the tracked ReLU input in inference mode."""
    x_train, y_train, x_test, _ = demo.load_data(0, 160)
    fused = demo.Net((32, 32, 32), True, 0, activation="relu")
    plain = demo.Net((32, 32, 32), True, 0, activation="relu")
    plain.norms = [dropnorm.BatchNorm1d(32) for _ in plain.norms]  # no activation: unfused

    def unfused_forward(x, keep=None):
        kept, acts = None, []
        for i in range(len(plain.linears) - 1):
            z = plain.norms[i].forward(plain.linears[i].forward(x))
            kept = z if i == keep else kept
            x = np.maximum(z, 0)
            acts.append(x)
        plain._acts = acts
        logits = plain.linears[-1].forward(x)
        return logits if keep is None else (logits, kept)

    def unfused_backward(dlogits):
        for norm in plain.norms:
            norm.zero_grad()
        g = plain.linears[-1].backward(dlogits)
        for i in reversed(range(len(plain.linears) - 1)):
            g = plain.norms[i].backward(g * (plain._acts[i] > 0))
            g = plain.linears[i].backward(g)

    for step in range(3):
        idx = slice(32 * step, 32 * step + 32)
        a, b = fused.forward(x_train[idx]), unfused_forward(x_train[idx])
        np.testing.assert_array_equal(a, b)
        _, da, _ = demo.softmax_cross_entropy(a, y_train[idx])
        fused.backward(da)
        unfused_backward(da)
        for la, lb in zip(fused.linears, plain.linears):
            np.testing.assert_array_equal(la.grad_weight, lb.grad_weight)
        fused.sgd_step(0.2)
        plain.sgd_step(0.2)
    fused.train(False)
    plain.train(False)
    (la, za), (lb, zb) = fused.forward(x_test, keep=2), unfused_forward(x_test, keep=2)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(za, zb)
    fused.train(True)
    with pytest.raises(RuntimeError, match="inference mode"):
        fused.forward(x_test, keep=2)


def test_same_seed_same_numbers():
    def once(seed):
        return demo.run(epochs=2, seed=seed, runs=("bn",), dropout_epochs=2, seeds=1,
                        eval_every=1, mc_samples=2)

    a, b, c = once(5), once(5), once(6)
    for name in (*PER_EPOCH, "grad_norm", "preact_percentiles"):
        assert a["runs"]["bn"][name] == b["runs"]["bn"][name], name
    assert a["runs"]["bn"]["train_loss"] != c["runs"]["bn"]["train_loss"]
    for name in ("batch_loss", *PER_EVALUATION):
        assert a["dropout"]["nets"]["dropout"][0][name] == b["dropout"]["nets"]["dropout"][0][name]
    assert a["dropout"]["averaging"] | {"seconds": 0} == b["dropout"]["averaging"] | {"seconds": 0}
    assert (a["dropout"]["nets"]["dropout"][0]["batch_loss"]
            != c["dropout"]["nets"]["dropout"][0]["batch_loss"])


def test_dropout_claims_on_fewer_seeds_and_epochs():
    """Claims 1-3 on seeds 0-1, 200 epochs and 10 sampled networks: dropout
    lowers the test error of each seed; the geometric and arithmetic means of
    k sampled networks come closer to the weight-scaled network as k grows;
    classic and inverted dropout give the same test probabilities up to
    float64 rounding at every evaluation."""
    results = demo.run(parts=("dropout",), seeds=2, dropout_epochs=200, mc_samples=10)
    assert results["runs"] == {}
    d = results["dropout"]
    none = d["summary"]["none"]["test_error"]
    drop = d["summary"]["dropout"]["test_error"]
    assert all(b < a for a, b in zip(none, drop)), (none, drop)
    assert all(e == 0 for e in d["summary"]["none"]["train_error"])  # it overfits
    verdicts = {c["claim"]: c["holds"] for c in results["claims"]}
    assert verdicts[next(k for k in verdicts if "lowers the test error" in k)]

    av = d["averaging"]
    assert av["ks"] == [1, 2, 5, 10]
    for mean in ("geometric", "arithmetic"):
        kl = av[mean]["kl"]
        assert all(x > y for x, y in zip(kl, kl[1:])), (mean, kl)
        assert av[mean]["agreement"][-1] > av[mean]["agreement"][0]
    assert av["geometric"]["kl"][-1] < 0.1 * av["geometric"]["kl"][0]
    assert av["arithmetic"]["test_error"][0] > av["scaled_test_error"]

    c = d["classic"]
    assert max(c["float64"]["max_abs_diff"]) < demo.ROUNDING
    assert min(c["float64"]["agreement"]) == 1.0
    assert c["classic_float64"]["test_error"] == c["inverted_float64"]["test_error"]
    # float32 starts equal up to float32 rounding
    assert c["float32"]["max_abs_diff"][0] < 1e-4


def test_bad_arguments_of_run():
    for kwargs, name in (({"epochs": 0}, "epochs"), ({"runs": ("resnet",)}, "runs"),
                         ({"lr": -1}, "lr"), ({"lr": 0}, "lr"), ({"lr": math.nan}, "lr"),
                         ({"dropout_lr": -0.1}, "dropout_lr"),
                         ({"dropout_epochs": 0}, "dropout_epochs"), ({"seeds": 0}, "seeds"),
                         ({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"),
                         ({"p_hidden": 1.0}, "p_hidden"), ({"p_input": -0.1}, "p_input"),
                         ({"mc_samples": 0}, "mc_samples"), ({"parts": ("resnet",)}, "parts"),
                         ({"batch_size": 1}, "batch_size"), ({"eval_every": 0}, "eval_every")):
        with pytest.raises(ValueError, match=name):
            demo.run(**kwargs)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--dropout-lr", "-0.5"], "--dropout-lr"),
    (["--epochs", "0"], "--epochs"),
    (["--dropout-epochs", "-3"], "--dropout-epochs"),
    (["--seeds", "0"], "--seeds"),
    (["--seed", "-1"], "--seed"),
    (["--part", "resnet"], "--part"),
])
def test_bad_arguments_of_main(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main([*argv, "--no-plot"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_png_in_an_existing_directory(tmp_path, capsys):
    missing = tmp_path / "figures" / "deeper"
    for out, message in ((missing / "demo.png", "does not exist"),
                         (tmp_path, "is a directory"),
                         (tmp_path / "demo.txt", ".png")):
        with pytest.raises(SystemExit) as exc:
            demo.main([*SHORT, "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--out" in err and message in err, err
    assert not (tmp_path / "figures").exists()  # nothing created
    assert list(tmp_path.iterdir()) == []


def test_runs_as_a_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dropnorm.demo", *SHORT, "--no-plot"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "claims" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "dropnorm.demo", "--lr", "-1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "--lr" in proc.stderr


@pytest.fixture(scope="module")
def default():
    return demo.run()


def test_default_run_supports_its_claims(default):
    """The headlines on the default settings (no timing); every verdict the
    default run prints (the README shows them) is 'yes'."""
    results = default
    assert results["config"]["epochs"] == demo.EPOCHS
    plain, bn = results["runs"]["plain"], results["runs"]["bn"]
    assert bn["train_loss"][-1] < 0.1 * plain["train_loss"][-1]  # not a near thing
    assert bn["test_acc"][-1] > 0.85 > 0.2 > plain["test_acc"][-1]
    g_plain = np.mean(plain["grad_norm"], axis=0)
    g_bn = np.mean(bn["grad_norm"], axis=0)
    assert g_plain[0] < 0.01 * g_plain[-2]  # vanishing towards the input
    assert g_bn[0] > 0.1 * g_bn[-2]  # not with batch norm
    fused = results["runs"]["bn_relu"]  # the ReLU twin, batch norm and ReLU one layer
    assert fused["activation"] == "relu"
    assert fused["test_acc"][-1] > 0.85 and fused["train_loss"][-1] < 0.1 * plain["train_loss"][-1]
    g_fused = np.mean(fused["grad_norm"], axis=0)
    assert g_fused[0] > 0.1 * g_fused[-2]
    verdicts = {c["claim"]: c["holds"] for c in results["claims"]}
    assert len(verdicts) == 9
    assert [c["part"] for c in results["claims"]].count("dropout") == 4
    assert all(v is True for v in verdicts.values()), verdicts
    assert "[n/a]" not in demo.format_table(results) and "[ NO]" not in demo.format_table(results)


def test_default_dropout_claims(default):
    d = default["dropout"]
    assert d["config"]["seeds"] == [0, 1, 2, 3, 4]
    # claim 1: on each seed, by at least half a point
    assert all(g >= 0.5 for g in d["summary"]["gain_points"]), d["summary"]["gain_points"]
    assert all(e == 0 for e in d["summary"]["none"]["train_error"])
    # claim 2: the averages approach the weight-scaled network
    av = d["averaging"]
    assert av["ks"] == list(demo.MC_KS)
    kl = av["geometric"]["kl"]
    assert all(x > y for x, y in zip(kl, kl[1:])), kl
    assert kl[-1] < 0.05 * kl[0]
    shown = [av["ks"].index(k) for k in demo.MC_SHOWN]
    for mean in ("arithmetic", "geometric"):
        assert all(av[mean]["kl"][i] > av[mean]["kl"][j] for i, j in zip(shown, shown[1:]))
        assert all(av[mean]["agreement"][i] < av[mean]["agreement"][j]
                   for i, j in zip(shown, shown[1:]))
    assert abs(av["arithmetic"]["test_error"][-1] - av["scaled_test_error"]) <= 0.01
    # claim 3: the same model up to float64 rounding, at every evaluation
    c = d["classic"]
    assert max(c["float64"]["max_abs_diff"]) < demo.ROUNDING
    assert min(c["float64"]["agreement"]) == 1.0


def test_default_claims_agree_with_the_table(default):
    """Every number in the dropout claims' evidence is printed in the table
    above them, with the same rounding."""
    text = demo.format_table(default)
    table, _, claims_text = text.partition("claims (verdicts")
    for claim in default["claims"]:
        if claim["part"] != "dropout":
            continue
        for number in re.findall(r"\d+\.\d+%?", claim["evidence"]):
            assert number in table, (number, claim["evidence"])
    d = default["dropout"]
    gains = d["summary"]["gain_points"]
    evidence = next(c for c in default["claims"] if c["part"] == "dropout")["evidence"]
    assert f"by {min(gains):.1f} to {max(gains):.1f} points" in evidence
    assert f"{np.mean(d['summary']['none']['test_error']):.1%}" in evidence
