"""The claims of batch norm and dropout, seen on a small deep network.

``python -m dropnorm.demo`` trains one deep fully-connected sigmoid network on
the 8x8 digits that ship with scikit-learn four times, side by side: plain,
with batch norm before every sigmoid (Ioffe & Szegedy 2015), with dropout
(Hinton et al. 2012; Srivastava et al. 2014), and with both. It prints a table
of what it measured, one verdict per claim computed from those numbers, and
draws a figure (matplotlib, Agg backend) of

- the training loss and the test accuracy per epoch: batch norm trains at a
  learning rate where the plain network stalls;
- the gradient norm of every layer: the plain sigmoid network's first layers
  get vanishing gradients, batch norm keeps them alive;
- the 15/50/85th percentiles of one sigmoid input over training, with and
  without batch norm (the paper's Figure 1 view);
- the train/test gap (test minus training cross-entropy): dropout narrows it.

Everything is NumPy plus dropnorm's ``BatchNorm1d`` and ``Dropout`` layers,
float32, with fixed seeds: the same seed gives the same numbers. The core is
``run()``, which returns the measurements as a dict; ``main(argv)`` is the
command line. Needs the ``[demo]`` extra (scikit-learn, matplotlib).
"""

import argparse
import math
import os
import sys
import textwrap
import time

import numpy as np

import dropnorm

DTYPE = np.float32

# The defaults, chosen so that every effect is clear on the default run (see
# the README's "The demo" for the numbers they give).
EPOCHS = 80
SEED = 0
HIDDEN = (128,) * 6  # six hidden sigmoid layers
LEARNING_RATE = 0.2  # plain SGD stalls here (and at every rate tried in 0.05 .. 2)
BATCH_SIZE = 32
N_TRAIN = 160  # training digits (small, so that the networks overfit); the other 1637 test
DROPOUT_HIDDEN = 0.1  # after each hidden sigmoid
DROPOUT_INPUT = 0.2  # on the 64 input pixels
TRACKED_LAYER = 6  # the hidden layer whose sigmoid input is tracked (1-based) ...
TRACKED_UNIT = 0  # ... and the unit of it
TARGET_ACCURACY = 0.85  # "epochs to reach" this test accuracy

RUNS = {  # key: (label, batch norm, dropout)
    "plain": ("plain", False, False),
    "bn": ("batch norm", True, False),
    "dropout": ("dropout", False, True),
    "bn+dropout": ("BN + dropout", True, True),
}
COLORS = {"plain": "tab:gray", "bn": "tab:blue", "dropout": "tab:orange",
          "bn+dropout": "tab:green"}


# ---------------------------------------------------------------------------
# data


def load_data(seed=SEED, n_train=N_TRAIN):
    """The 1797 8x8 digits, split at random (seed) into n_train training
    digits and the rest for test; pixels centred with the training mean and
    scaled by the training set's standard deviation. Returns float32 arrays
    (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    if not 10 <= n_train <= len(y) - 100:
        raise ValueError(f"n_train: expected 10 .. {len(y) - 100}, got {n_train}")
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:n_train], order[n_train:]
    mean = x[train].mean(axis=0)
    scale = x[train].std()
    x = ((x - mean) / scale).astype(DTYPE)
    return x[train], y[train], x[test], y[test]


# ---------------------------------------------------------------------------
# the network


def sigmoid(z):
    """Logistic function without overflow."""
    return (0.5 + 0.5 * np.tanh(0.5 * z)).astype(z.dtype, copy=False)


class Linear:
    """y = x @ W + b, with Glorot-uniform W (Glorot & Bengio 2010, the usual
    initialisation for sigmoid networks). backward stores the gradients in
    grad_weight and grad_bias, replacing the previous ones."""

    def __init__(self, n_in, n_out, rng, bias=True):
        limit = math.sqrt(6.0 / (n_in + n_out))
        self.weight = rng.uniform(-limit, limit, (n_in, n_out)).astype(DTYPE)
        self.bias = np.zeros(n_out, DTYPE) if bias else None
        self.grad_weight = None
        self.grad_bias = None
        self._x = None

    def forward(self, x):
        self._x = x
        y = x @ self.weight
        if self.bias is not None:
            y += self.bias
        return y

    def backward(self, dy):
        self.grad_weight = self._x.T @ dy
        if self.bias is not None:
            self.grad_bias = dy.sum(axis=0)
        return dy @ self.weight.T

    def params(self):
        yield self.weight, self.grad_weight
        if self.bias is not None:
            yield self.bias, self.grad_bias


class Net:
    """64 -> hidden sigmoid layers -> 10 softmax. Each hidden layer is
    Linear -> [BatchNorm1d] -> sigmoid -> [Dropout]; the input gets its own
    Dropout when dropout is on. With batch norm the Linear has no bias (the
    batch norm's beta takes its place, as in the paper)."""

    def __init__(self, hidden, batch_norm, dropout, seed, p_hidden=DROPOUT_HIDDEN,
                 p_input=DROPOUT_INPUT):
        rng = np.random.default_rng([seed, 1])  # the same weights for every run
        sizes = (64, *hidden)
        self.linears = [Linear(a, b, rng, bias=not batch_norm)
                        for a, b in zip(sizes[:-1], sizes[1:])]
        self.linears.append(Linear(sizes[-1], 10, rng))
        self.norms = [dropnorm.BatchNorm1d(n, dtype=DTYPE) for n in hidden] if batch_norm else []
        self.drops = []
        self.input_drop = None
        if dropout:
            self.input_drop = dropnorm.Dropout(p_input, seed=seed * 1000 + 999)
            self.drops = [dropnorm.Dropout(p_hidden, seed=seed * 1000 + i)
                          for i in range(len(hidden))]
        self._acts = []

    def train(self, mode=True):
        for layer in (*self.norms, *self.drops):
            layer.train(mode)
        if self.input_drop is not None:
            self.input_drop.train(mode)

    def forward(self, x, keep=None):
        """Logits for x; ``keep`` (a 0-based hidden layer) also returns the
        sigmoid input of that layer."""
        if self.input_drop is not None:
            x = self.input_drop.forward(x)
        self._acts = []
        kept = None
        for i in range(len(self.linears) - 1):
            z = self.linears[i].forward(x)
            if self.norms:
                z = self.norms[i].forward(z)
            if i == keep:
                kept = z
            x = sigmoid(z)
            self._acts.append(x)
            if self.drops:
                x = self.drops[i].forward(x)
        logits = self.linears[-1].forward(x)
        return logits if keep is None else (logits, kept)

    def backward(self, dlogits):
        """Back-propagate; fills every layer's gradients (replacing them)."""
        for norm in self.norms:
            norm.zero_grad()  # BatchNorm1d accumulates its grads
        g = self.linears[-1].backward(dlogits)
        for i in reversed(range(len(self.linears) - 1)):
            if self.drops:
                g = self.drops[i].backward(g)
            a = self._acts[i]
            g = g * a * (1 - a)
            if self.norms:
                g = self.norms[i].backward(g)
            g = self.linears[i].backward(g)

    def sgd_step(self, lr):
        for lin in self.linears:
            for param, grad in lin.params():
                param -= lr * grad
        for norm in self.norms:
            norm.weight -= lr * norm.grad_weight
            norm.bias -= lr * norm.grad_bias

    def calibrate(self, x, batch_size):
        """Population statistics for every batch norm (the paper's Algorithm 2,
        steps 8-10): each layer's running mean and variance are re-estimated
        as the average over the training mini-batches, layer by layer, the
        layers below already in inference mode. Changes no weight."""
        if not self.norms:
            return
        starts = range(0, len(x) - batch_size + 1, batch_size)
        for lin, norm in zip(self.linears, self.norms):
            z = lin.forward(x)
            norm.calibrate([z[s:s + batch_size] for s in starts])
            norm.eval()
            x = sigmoid(norm.forward(z))


def softmax_cross_entropy(logits, y):
    """(mean loss, d loss / d logits, accuracy)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    loss = float(-log_prob[rows, y].mean())
    grad = np.exp(log_prob)
    grad[rows, y] -= 1
    grad /= len(y)
    acc = float((logits.argmax(axis=1) == y).mean())
    return loss, grad.astype(DTYPE, copy=False), acc


# ---------------------------------------------------------------------------
# training and measurement


def _evaluate(net, data, batch_size, keep):
    """Inference mode (batch norm on population statistics, dropout the
    identity): (train loss, train acc, test loss, test acc, percentiles of the
    tracked unit's sigmoid input over the test set)."""
    x_train, y_train, x_test, y_test = data
    net.calibrate(x_train, batch_size)
    net.train(False)
    train_loss, _, train_acc = softmax_cross_entropy(net.forward(x_train), y_train)
    logits, z = net.forward(x_test, keep=keep)
    test_loss, _, test_acc = softmax_cross_entropy(logits, y_test)
    net.train(True)
    pcts = np.percentile(z[:, TRACKED_UNIT].astype(np.float64), [15, 50, 85])
    return train_loss, train_acc, test_loss, test_acc, [float(v) for v in pcts]


def train_one(key, data, epochs, seed, lr, hidden, batch_size, p_hidden=DROPOUT_HIDDEN,
              p_input=DROPOUT_INPUT, progress=None):
    """Train one network of RUNS[key]; returns its per-epoch measurements."""
    _, batch_norm, dropout = RUNS[key]
    x_train, y_train = data[0], data[1]
    net = Net(hidden, batch_norm, dropout, seed, p_hidden, p_input)
    order_rng = np.random.default_rng([seed, 2])  # the same batches for every run
    keep = min(TRACKED_LAYER, len(hidden)) - 1
    out = {"label": RUNS[key][0], "batch_norm": batch_norm, "dropout": dropout,
           "train_loss": [], "train_acc": [], "train_eval_loss": [], "test_loss": [],
           "test_acc": [], "grad_norm": [], "preact_percentiles": []}
    start = time.perf_counter()
    *_, pcts = _evaluate(net, data, batch_size, keep)
    out["preact_percentiles"].append(pcts)  # epoch 0: at initialisation
    n = len(y_train)
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(n)
        losses, norms = [], []
        for s in range(0, n - batch_size + 1, batch_size):  # drop the last partial batch
            idx = order[s:s + batch_size]
            logits = net.forward(x_train[idx])
            loss, dlogits, _ = softmax_cross_entropy(logits, y_train[idx])
            net.backward(dlogits)
            norms.append([float(np.linalg.norm(lin.grad_weight)) for lin in net.linears])
            net.sgd_step(lr)
            losses.append(loss)
        train_loss, train_acc, test_loss, test_acc, pcts = _evaluate(net, data, batch_size, keep)
        out["train_loss"].append(float(np.mean(losses)))  # as trained: mini-batches, train mode
        out["train_acc"].append(train_acc)
        out["train_eval_loss"].append(train_loss)
        out["test_loss"].append(test_loss)
        out["test_acc"].append(test_acc)
        out["grad_norm"].append(np.mean(norms, axis=0).tolist())
        out["preact_percentiles"].append(pcts)
        if progress is not None:
            progress(key, epoch, epochs, out)
    out["seconds"] = time.perf_counter() - start
    return out


class _OneThread:
    """One thread for BLAS and for dropnorm while training: the tensors are
    tiny (32 x 128), and threads would only wait on each other. The previous
    thread counts are restored on exit."""

    def __enter__(self):
        self.threads = dropnorm.get_max_threads()
        dropnorm.set_num_threads(1)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - scikit-learn depends on it
            self.blas = None
        else:
            self.blas = threadpool_limits(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        dropnorm.set_num_threads(self.threads)
        if self.blas is not None:
            self.blas.restore_original_limits()


def run(epochs=EPOCHS, seed=SEED, lr=LEARNING_RATE, hidden=HIDDEN, batch_size=BATCH_SIZE,
        n_train=N_TRAIN, p_hidden=DROPOUT_HIDDEN, p_input=DROPOUT_INPUT, runs=tuple(RUNS),
        progress=None):
    """Train the networks named in ``runs`` (keys of RUNS) and measure them.

    Returns a dict: ``config`` (the settings), ``runs`` (key -> per-epoch
    lists: ``train_loss`` (mean mini-batch loss in training mode),
    ``train_acc``/``train_eval_loss``/``test_acc``/``test_loss`` (inference
    mode), ``grad_norm`` (epochs x layers: mean Frobenius norm of each
    Linear's weight gradient), ``preact_percentiles`` (epochs + 1 rows, from
    initialisation: 15/50/85th percentiles of the tracked sigmoid input over
    the test set), ``seconds``) and ``claims`` (see :func:`claims`).
    ``progress(key, epoch, epochs, run_so_far)`` is called after each epoch."""
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs: expected a positive integer, got {epochs}")
    unknown = [k for k in runs if k not in RUNS]
    if unknown:
        raise ValueError(f"runs: unknown {unknown}; expected some of {list(RUNS)}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed}")
    batch_size = int(batch_size)
    if not 2 <= batch_size <= n_train:  # batch norm needs two values per batch
        raise ValueError(f"batch_size: expected 2 .. n_train ({n_train}), got {batch_size}")
    hidden = tuple(int(h) for h in hidden)
    data = load_data(seed, n_train)
    with _OneThread():
        results = {key: train_one(key, data, epochs, seed, lr, hidden, batch_size, p_hidden,
                                  p_input, progress)
                   for key in runs}
    config = {"epochs": epochs, "seed": seed, "lr": lr, "hidden": list(hidden),
              "batch_size": batch_size, "n_train": len(data[1]), "n_test": len(data[3]),
              "dropout_hidden": p_hidden, "dropout_input": p_input,
              "tracked_layer": min(TRACKED_LAYER, len(hidden)), "tracked_unit": TRACKED_UNIT,
              "dtype": np.dtype(DTYPE).name}
    out = {"config": config, "runs": results}
    out["claims"] = claims(out)
    return out


# ---------------------------------------------------------------------------
# claims: each computed from the measurements


def epochs_to(accs, target=TARGET_ACCURACY):
    """First epoch (1-based) whose test accuracy reaches target, else None."""
    for i, a in enumerate(accs):
        if a >= target:
            return i + 1
    return None


LAST = 5  # the train/test gaps are averaged over the last epochs (they jitter)


def _last(r, key, last=LAST):
    n = min(last, len(r[key]))
    return float(np.mean(r[key][-n:]))


def loss_gap(r, last=LAST):
    """Test minus training cross-entropy (both in inference mode), mean over
    the last epochs: the generalisation gap."""
    return _last(r, "test_loss", last) - _last(r, "train_eval_loss", last)


def acc_gap(r, last=LAST):
    """Training minus test accuracy (inference mode), mean over the last epochs."""
    return _last(r, "train_acc", last) - _last(r, "test_acc", last)


def claims(results):
    """The verdicts, one dict per claim whose runs are present: ``claim`` (the
    statement), ``evidence`` (the measured values) and ``holds`` (True or
    False, computed from them; None where the comparison means nothing)."""
    runs = results["runs"]
    cfg = results["config"]
    out = []
    chance = math.log(10)
    if "plain" in runs and "bn" in runs:
        p, b = runs["plain"], runs["bn"]
        e_p, e_b = epochs_to(p["test_acc"]), epochs_to(b["test_acc"])
        out.append({
            "claim": "batch norm converges faster",
            "evidence": (f"training loss after epoch {cfg['epochs']}: batch norm "
                         f"{b['train_loss'][-1]:.3f}, plain {p['train_loss'][-1]:.3f}; "
                         f"{TARGET_ACCURACY:.0%} test accuracy at epoch {e_b or 'never'} vs "
                         f"{e_p or 'never'}"),
            "holds": bool(b["train_loss"][-1] < p["train_loss"][-1]
                          and e_b is not None and (e_p is None or e_b < e_p)),
        })
        out.append({
            "claim": f"at learning rate {cfg['lr']} the plain network stalls, batch norm trains",
            "evidence": (f"plain's lowest training loss {min(p['train_loss']):.3f} "
                         f"(chance: ln 10 = {chance:.3f}), test accuracy "
                         f"{p['test_acc'][-1]:.1%}; batch norm's test accuracy "
                         f"{b['test_acc'][-1]:.1%}"),
            "holds": bool(min(p["train_loss"]) > 0.9 * chance
                          and b["test_acc"][-1] >= TARGET_ACCURACY),
        })
        gp = np.mean(p["grad_norm"], axis=0)
        gb = np.mean(b["grad_norm"], axis=0)
        rp, rb = gp[0] / gp[-2], gb[0] / gb[-2]
        out.append({
            "claim": "the plain network's gradients vanish towards the input; "
                     "batch norm keeps them alive",
            "evidence": (f"|dW1| / |dW{len(gp) - 1}| (first / last hidden layer): "
                         f"plain {rp:.1e}, batch norm {rb:.2f}"),
            "holds": bool(rp < 0.01 and rb > 0.1),
        })
        pp = np.asarray(p["preact_percentiles"])
        pb = np.asarray(b["preact_percentiles"])
        drift_p = float(np.abs(pp[1:, 1] - pp[1, 1]).max())
        drift_b = float(np.abs(pb[1:, 1] - pb[1, 1]).max())
        spread_p = float(np.mean(pp[1:, 2] - pp[1:, 0]))
        spread_b = float(np.mean(pb[1:, 2] - pb[1:, 0]))
        out.append({
            "claim": f"batch norm keeps the sigmoid input's distribution steady "
                     f"(layer {cfg['tracked_layer']}, unit {cfg['tracked_unit']})",
            "evidence": (f"median drifts by {drift_b:.2f} after epoch 1 with batch norm, "
                         f"{drift_p:.2f} without; 15-85th percentile spread "
                         f"{spread_b:.2f} with, {spread_p:.2f} without"),
            "holds": bool(drift_b < drift_p and spread_b > spread_p),
        })
    for base, drop in (("bn", "bn+dropout"), ("plain", "dropout")):
        if base in runs and drop in runs:
            a, d = runs[base], runs[drop]
            n = min(LAST, cfg["epochs"])
            claim = {
                "claim": f"dropout narrows the train/test gap ({a['label']} -> {d['label']})",
                "evidence": (f"test - training cross-entropy, mean of the last {n} epochs: "
                             f"{loss_gap(a):.3f} -> {loss_gap(d):.3f} (accuracy gap "
                             f"{acc_gap(a):.1%} -> {acc_gap(d):.1%}, test accuracy "
                             f"{_last(a, 'test_acc', n):.1%} -> {_last(d, 'test_acc', n):.1%})"),
                "holds": bool(loss_gap(d) < loss_gap(a)),
            }
            if _last(a, "train_acc", n) < TARGET_ACCURACY:
                claim["holds"] = None
                claim["evidence"] = (f"{a['label']} does not learn (training accuracy "
                                     f"{_last(a, 'train_acc', n):.1%}): no gap to narrow")
            out.append(claim)
    return out


# ---------------------------------------------------------------------------
# output


def format_table(results, width=100):
    """The terminal report: loss and test accuracy by epoch, the state after
    the last epoch, gradient norms per layer, the tracked sigmoid input's
    percentiles, and the verdicts (evidence wrapped at ``width``)."""
    runs = results["runs"]
    keys = list(runs)
    cfg = results["config"]
    epochs = cfg["epochs"]
    lines = ["training loss (mini-batches, training mode) / test accuracy, by epoch"]
    lines.append(f"{'epoch':>5}" + "".join(f"{runs[k]['label']:>18}" for k in keys))
    shown = sorted({e for e in (1, 2, 5) if e <= epochs}
                   | {max(1, round(epochs * k / 8)) for k in range(1, 9)})
    for e in shown:
        lines.append(f"{e:>5}" + "".join(
            f"{runs[k]['train_loss'][e - 1]:>10.3f} /{runs[k]['test_acc'][e - 1]:>6.1%}"
            for k in keys))

    lines += ["", f"after epoch {epochs}, in inference mode (CE: cross-entropy)"]
    cols = ("train acc", "test acc", "train CE", "test CE", "CE gap")
    lines.append(f"{'run':<14}" + "".join(f"{c:>10}" for c in cols))
    for k in keys:
        r = runs[k]
        lines.append(f"{r['label']:<14}{r['train_acc'][-1]:>10.1%}{r['test_acc'][-1]:>10.1%}"
                     f"{r['train_eval_loss'][-1]:>10.3f}{r['test_loss'][-1]:>10.3f}"
                     f"{r['test_loss'][-1] - r['train_eval_loss'][-1]:>10.3f}")

    n_layers = len(cfg["hidden"]) + 1
    lines += ["", "gradient norm |dL/dW| of each layer, mean over training "
              f"(layer 1: input side, layer {n_layers}: softmax)"]
    lines.append(f"{'layer':<14}" + "".join(f"{i:>9}" for i in range(1, n_layers + 1)))
    for k in keys:
        g = np.mean(runs[k]["grad_norm"], axis=0)
        lines.append(f"{runs[k]['label']:<14}" + "".join(f"{v:>9.1e}" for v in g))

    lines += ["", f"sigmoid input of layer {cfg['tracked_layer']}, unit {cfg['tracked_unit']}, "
              "over the test set: 15th / 50th / 85th percentile"]
    at = sorted({0, 1, epochs // 2, epochs})
    lines.append(f"{'':<14}" + "".join(f"{'epoch ' + str(e):>19}" for e in at))
    for k in keys:
        pc = np.asarray(runs[k]["preact_percentiles"])
        lines.append(f"{runs[k]['label']:<14}" + "".join(
            f"{pc[e, 0]:>7.2f}{pc[e, 1]:>6.2f}{pc[e, 2]:>6.2f}" for e in at))

    if results["claims"]:
        lines += ["", "claims (verdicts computed from the numbers above)"]
        for c in results["claims"]:
            verdict = {True: "yes", False: "NO", None: "n/a"}[c["holds"]]
            lines.append(f"  [{verdict:>3}] {c['claim']}")
            lines += textwrap.wrap(c["evidence"], width, initial_indent=" " * 8,
                                   subsequent_indent=" " * 8)
    return "\n".join(lines)


def plot(results, path):
    """Draw the figure with matplotlib's Agg backend (no display, no pyplot
    state) and write it to path (PNG); returns path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = results["runs"]
    cfg = results["config"]
    epochs = np.arange(1, cfg["epochs"] + 1)
    fig = Figure(figsize=(16, 9.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    (ax_loss, ax_acc, ax_grad), (ax_pp, ax_pb, ax_gap) = axes

    for k, r in runs.items():
        style = {"color": COLORS[k], "label": r["label"], "lw": 2,
                 "ls": "--" if r["dropout"] else "-"}
        ax_loss.plot(epochs, r["train_loss"], **style)
        ax_acc.plot(epochs, np.asarray(r["test_acc"]) * 100, **style)
        g = np.mean(r["grad_norm"], axis=0)
        ax_grad.plot(np.arange(1, len(g) + 1), g, marker="o", **style)
        ax_gap.plot(epochs, np.asarray(r["test_loss"]) - r["train_eval_loss"], **style)

    ax_loss.set(title="Training loss (cross-entropy)", xlabel="epoch", ylabel="loss",
                yscale="log")
    ax_loss.axhline(math.log(10), color="k", ls=":", lw=1, label="chance (ln 10)")
    ax_acc.set(title="Test accuracy", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    ax_grad.set(title="Gradient norm per layer (mean over training)",
                xlabel="layer (1 = input side, last = softmax)", ylabel="|dL/dW|",
                yscale="log")
    ax_gap.set(title="Train/test gap: test - training cross-entropy", xlabel="epoch",
               ylabel="gap (nats)")
    ax_gap.axhline(0, color="k", lw=0.8)

    layer, unit = cfg["tracked_layer"], cfg["tracked_unit"]
    ticks = np.arange(0, cfg["epochs"] + 1)
    panels = ((ax_pp, "plain", "without batch norm"), (ax_pb, "bn", "with batch norm"))
    shown = [np.asarray(runs[key]["preact_percentiles"]) for _, key, _ in panels if key in runs]
    lo = min((pc.min() for pc in shown), default=-1.0)
    hi = max((pc.max() for pc in shown), default=1.0)
    pad = 0.05 * (hi - lo) + 1e-3
    for ax, key, text in panels:
        ax.set(title=f"Sigmoid input, layer {layer} unit {unit}, {text}",
               xlabel="epoch (0 = initialisation)", ylabel="15 / 50 / 85th percentile",
               ylim=(lo - pad, hi + 5 * pad))
        if key not in runs:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            continue
        pc = np.asarray(runs[key]["preact_percentiles"])
        ax.fill_between(ticks, pc[:, 0], pc[:, 2], color=COLORS[key], alpha=0.2,
                        label="15-85th")
        ax.plot(ticks, pc[:, 1], color=COLORS[key], lw=2, label="median")
        ax.plot(ticks, pc[:, 0], color=COLORS[key], lw=1)
        ax.plot(ticks, pc[:, 2], color=COLORS[key], lw=1)
        ax.legend(loc="upper right", ncol=2, fontsize=9)
        if np.max(pc[1:, 2] - pc[1:, 0]) < 0.01 * (hi - lo):
            ax.text(0.03, 0.05, "15th = 50th = 85th percentile:\nthe same input for every digit",
                    transform=ax.transAxes, fontsize=10, color="k")

    for ax in (ax_loss, ax_acc, ax_grad, ax_gap):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    for ax in (ax_pp, ax_pb):
        ax.grid(alpha=0.3)
    hidden = cfg["hidden"]
    fig.suptitle(
        f"dropnorm demo: {len(hidden)} hidden sigmoid layers of {hidden[0]} on 8x8 digits "
        f"({cfg['n_train']} train / {cfg['n_test']} test), SGD lr {cfg['lr']}, "
        f"batch {cfg['batch_size']}, seed {cfg['seed']}", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


class _Progress:
    """One compact line per run: a dot per epoch (or per few), then a summary."""

    def __init__(self, stream, width=40):
        self.stream = stream
        self.width = width
        self.start = 0.0

    def __call__(self, key, epoch, epochs, r):
        step = max(1, math.ceil(epochs / self.width))
        if epoch == 1:
            self.start = time.perf_counter()
            self.stream.write(f"  {r['label']:<13} ")
        if epoch % step == 0 or epoch == epochs:
            self.stream.write(".")
        if epoch == epochs:
            self.stream.write(f"  loss {r['train_loss'][-1]:.3f}, test {r['test_acc'][-1]:.1%}"
                              f"  ({time.perf_counter() - self.start:.1f} s)\n")
        self.stream.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dropnorm.demo",
        description="Train a deep sigmoid network on the 8x8 digits plain, with batch "
                    "norm, with dropout and with both; print the measurements and the "
                    "verdict on each claim, and plot them.")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"epochs per run (default {EPOCHS})")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed of the split, weights, batches and masks (default {SEED})")
    parser.add_argument("--lr", type=float, default=LEARNING_RATE,
                        help=f"SGD learning rate (default {LEARNING_RATE})")
    parser.add_argument("--out", default="dropnorm_demo.png",
                        help="where to write the figure (default dropnorm_demo.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the figure")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs: expected a positive integer")
    if not 0 <= args.seed < 2**32:
        parser.error("--seed: expected an integer in [0, 2**32)")
    try:
        import sklearn  # noqa: F401
        if not args.no_plot:
            import matplotlib  # noqa: F401
    except ImportError as exc:
        missing = {"sklearn": "scikit-learn"}.get(exc.name, exc.name)
        parser.exit(2, f"{parser.prog}: needs scikit-learn and matplotlib ({missing} is "
                       "missing): pip install \".[demo]\" in the source tree, or "
                       "pip install scikit-learn matplotlib\n")

    hidden = HIDDEN
    print(f"dropnorm {dropnorm.__version__} demo: {len(hidden)} hidden sigmoid layers of "
          f"{hidden[0]} units on the 8x8 digits ({N_TRAIN} for training)")
    print(f"SGD at learning rate {args.lr}, batches of {BATCH_SIZE}, {args.epochs} epochs, "
          f"seed {args.seed}; dropout: {DROPOUT_INPUT} input, {DROPOUT_HIDDEN} hidden")
    start = time.perf_counter()
    results = run(epochs=args.epochs, seed=args.seed, lr=args.lr,
                  progress=_Progress(sys.stdout))
    print()
    print(format_table(results))
    if not args.no_plot:
        out = os.path.abspath(args.out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        plot(results, out)
        print(f"\nfigure written to {out}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
