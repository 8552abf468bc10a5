"""The claims of batch norm and dropout, seen on the 8x8 digits.

``python -m dropnorm.demo`` has two parts, each with its own networks, table
rows, figure panels and verdicts.

Batch norm (Ioffe & Szegedy 2015): one deep fully-connected sigmoid network,
trained plain and with batch norm before every sigmoid, side by side, and
its ReLU twin as it is built today, each hidden layer's batch norm and ReLU
one fused ``BatchNorm1d(n, activation="relu")``. The table and the figure show

- the training loss and the test accuracy per epoch: batch norm trains at a
  learning rate where the plain network stalls, and so does the fused
  batch norm + ReLU network;
- the gradient norm of every layer: the plain sigmoid network's first layers
  get vanishing gradients, batch norm keeps them alive;
- the 15/50/85th percentiles of one sigmoid input over training, with and
  without batch norm (the paper's Figure 1 view).

Dropout (Hinton et al. 2012; Srivastava et al. 2014): a wide ReLU network
without batch norm, which overfits the small training split, trained without
and with dropout (0.2 on the input, 0.5 on every hidden layer) for several
seeds. It shows the papers' three claims:

1. less overfitting: dropout lowers the test error, for every seed;
2. model averaging: the weight-scaled network (inference mode) is close to
   the average of the predictions of k sampled thinned networks, and that
   average approaches it as k grows (Srivastava et al. 2014, section 7.5);
3. classic (2012: unscaled in training, ``x*(1-p)`` at test) and inverted
   dropout are the same model: trained with the same masks, the classic
   network reparametrised (weights after a dropout divided by 1 - p, their
   learning rate by (1 - p)**2) gives the inverted one's test predictions up
   to rounding. The pair is trained in float64, where rounding stays near
   1e-14, and in float32, where SGD makes it grow (as it does between the
   float32 and float64 versions of one network).

Everything is NumPy plus dropnorm's ``BatchNorm1d``, ``Dropout`` and
``dropout``, float32 unless said otherwise, with explicit seeds and streams:
the same arguments give the same numbers. The core is ``run()``, which returns the measurements
as a dict; ``main(argv)`` is the command line. Needs the ``[demo]`` extra
(scikit-learn, matplotlib).
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
SEED = 0
N_TRAIN = 160  # training digits (few, so that the networks overfit); the other 1637 test
BATCH_SIZE = 32

# batch norm: a deep sigmoid network
EPOCHS = 80
HIDDEN = (128,) * 6  # six hidden sigmoid layers
LEARNING_RATE = 0.2  # plain SGD stalls here (and at every rate tried in 0.05 .. 2)
TRACKED_LAYER = 6  # the hidden layer whose activation input is tracked (1-based) ...
TRACKED_UNIT = 0  # ... and the unit of it
TARGET_ACCURACY = 0.85  # "epochs to reach" this test accuracy

RUNS = {  # key: (label, batch norm, activation)
    "plain": ("plain", False, "sigmoid"),
    "bn": ("batch norm", True, "sigmoid"),
    "bn_relu": ("BN+ReLU fused", True, "relu"),  # one BatchNorm1d(activation="relu") per layer
}

# dropout: a wide ReLU network without batch norm
DROPOUT_EPOCHS = 400  # long past the point where the training set is learnt by heart
DROPOUT_HIDDEN = (256,) * 3  # three hidden ReLU layers
DROPOUT_LR = 0.1
DROPOUT_SEEDS = 5  # claim 1 is checked on seeds seed .. seed + 4
P_INPUT = 0.2  # the papers' recipe: 0.2 on the input pixels ...
P_HIDDEN = 0.5  # ... and 0.5 after every hidden layer
EVAL_EVERY = 10  # the ReLU networks are evaluated every 10th epoch (and after the last)
MC_SAMPLES = 100  # sampled thinned networks for the model-averaging claim
MC_KS = (1, 2, 5, 10, 20, 50, 100)  # averages of k of them (k divides MC_SAMPLES)
MC_SHOWN = (1, 10, 100)  # the ones in the table and the claim
LAST = 5  # the dropout claims average the last 5 evaluations (test error jitters)
ROUNDING = 1e-9  # largest float64 |p_classic - p_inverted| still called rounding

PARTS = ("batchnorm", "dropout")

STYLES = {  # every curve has its own colour and its own line style
    "plain": {"color": "tab:gray", "ls": "-"},
    "bn": {"color": "tab:blue", "ls": "--"},
    "bn_relu": {"color": "tab:purple", "ls": "-."},
    "none": {"color": "tab:red", "ls": "-"},
    "dropout": {"color": "tab:green", "ls": "--"},
}
DROPOUT_LABELS = {"none": "no dropout", "dropout": "dropout"}


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
# the networks


def sigmoid(z):
    """Logistic function without overflow."""
    return (0.5 + 0.5 * np.tanh(0.5 * z)).astype(z.dtype, copy=False)


class Linear:
    """y = x @ W + b, with uniform W: Glorot's limit sqrt(6/(n_in + n_out))
    (Glorot & Bengio 2010, the usual initialisation for sigmoid networks) or
    He's sqrt(6/n_in) (He et al. 2015, for ReLU networks). backward stores
    the gradients in grad_weight and grad_bias, replacing the previous ones."""

    def __init__(self, n_in, n_out, rng, bias=True, init="glorot", dtype=DTYPE):
        fan = n_in + n_out if init == "glorot" else n_in
        limit = math.sqrt(6.0 / fan)
        self.weight = rng.uniform(-limit, limit, (n_in, n_out)).astype(dtype)
        self.bias = np.zeros(n_out, dtype) if bias else None
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
    """The batch-norm part's network: 64 -> hidden layers -> 10 softmax. Each
    hidden layer is Linear -> [BatchNorm1d] -> sigmoid, or with
    activation="relu" Linear -> [BatchNorm1d] -> ReLU (He-uniform weights),
    where batch norm and ReLU are one fused ``BatchNorm1d(n,
    activation="relu")``: one pass forward and one backward, bit for bit the
    two layers. With batch norm the Linear has no bias (the batch norm's
    beta takes its place, as in the paper)."""

    def __init__(self, hidden, batch_norm, seed, activation="sigmoid"):
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"activation: expected 'sigmoid' or 'relu', got {activation!r}")
        rng = np.random.default_rng([seed, 1])  # the same weights for every run
        sizes = (64, *hidden)
        init = "glorot" if activation == "sigmoid" else "he"
        self.linears = [Linear(a, b, rng, bias=not batch_norm, init=init)
                        for a, b in zip(sizes[:-1], sizes[1:])]
        self.linears.append(Linear(sizes[-1], 10, rng, init=init))
        self.relu = activation == "relu"
        fused = "relu" if self.relu else None  # the ReLU inside the batch norm's pass
        self.norms = ([dropnorm.BatchNorm1d(n, dtype=DTYPE, activation=fused) for n in hidden]
                      if batch_norm else [])
        self._acts = []

    def _relu_input(self, i, z):
        """The fused layer i's ReLU input for its Linear's output z, which
        the fused pass does not return: ``batch_norm_infer`` with the
        layer's statistics (inference mode only)."""
        norm = self.norms[i]
        if norm.training:
            raise RuntimeError("the fused layer's ReLU input is tracked in inference mode only")
        return dropnorm.batch_norm_infer(z, norm.running_mean, norm.running_var, norm.weight,
                                         norm.bias, eps=norm.eps)

    def train(self, mode=True):
        for layer in self.norms:
            layer.train(mode)

    def forward(self, x, keep=None):
        """Logits for x; ``keep`` (a 0-based hidden layer) also returns the
        activation input (sigmoid or ReLU) of that layer."""
        self._acts = []
        kept = None
        for i in range(len(self.linears) - 1):
            z = self.linears[i].forward(x)
            if self.relu and self.norms:  # batch norm and ReLU in one pass
                if i == keep:
                    kept = self._relu_input(i, z)
                x = self.norms[i].forward(z)
            else:
                if self.norms:
                    z = self.norms[i].forward(z)
                if i == keep:
                    kept = z
                x = np.maximum(z, 0) if self.relu else sigmoid(z)
            self._acts.append(x)
        logits = self.linears[-1].forward(x)
        return logits if keep is None else (logits, kept)

    def backward(self, dlogits):
        """Back-propagate; fills every layer's gradients (replacing them)."""
        for norm in self.norms:
            norm.zero_grad()  # BatchNorm1d accumulates its grads
        g = self.linears[-1].backward(dlogits)
        for i in reversed(range(len(self.linears) - 1)):
            a = self._acts[i]
            if self.relu and self.norms:
                g = self.norms[i].backward(g)  # the fused layer masks by its output > 0
            else:
                g = g * (a > 0) if self.relu else g * a * (1 - a)
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
            x = norm.forward(z) if self.relu else sigmoid(norm.forward(z))


def dropout_seed(seed, layer):
    """The Philox key of the training masks of one dropout layer (0: the
    input) of the networks of ``seed``."""
    return seed * 1000 + layer


def sample_seed(seed, layer):
    """The Philox key of the sampled masks of the model-averaging claim; the
    sample's index is the stream."""
    return seed * 1000 + 500 + layer


class ReluNet:
    """The dropout part's network: 64 -> hidden ReLU layers -> 10 softmax,
    He-uniform weights, no batch norm. With dropout, a ``dropnorm.Dropout``
    comes before every Linear: p_input on the pixels, p_hidden on the output
    of every hidden layer.

    mode="classic" is the inverted network reparametrised: the weights of a
    Linear after a dropout of p start at the inverted network's divided by
    1 - p, and learn at lr / (1 - p)**2. Trained with the same masks, the two
    compute the same function at every step (see :func:`train_relu`)."""

    def __init__(self, hidden, seed, p_input=0.0, p_hidden=0.0, mode="inverted", dtype=DTYPE):
        rng = np.random.default_rng([seed, 3])  # the same weights with and without dropout
        sizes = (64, *hidden, 10)
        self.linears = [Linear(a, b, rng, init="he", dtype=dtype)
                        for a, b in zip(sizes[:-1], sizes[1:])]
        self.ps = (float(p_input), *(float(p_hidden) for _ in hidden))
        self.mode = mode
        self.drops = [dropnorm.Dropout(p, mode=mode, seed=dropout_seed(seed, i)) if p > 0
                      else None for i, p in enumerate(self.ps)]
        self.lr_scale = [1.0] * len(self.linears)
        if mode == "classic":
            for i, p in enumerate(self.ps):
                if p > 0:
                    lin = self.linears[i]
                    lin.weight = (lin.weight.astype(np.float64) / (1.0 - p)).astype(dtype)
                    self.lr_scale[i] = 1.0 / (1.0 - p) ** 2
        self._acts = []

    def train(self, mode=True):
        for drop in self.drops:
            if drop is not None:
                drop.train(mode)

    def forward(self, x):
        """Logits for x (dropout in training mode draws the next masks)."""
        self._acts = []
        last = len(self.linears) - 1
        for i, lin in enumerate(self.linears):
            if self.drops[i] is not None:
                x = self.drops[i].forward(x)
            z = lin.forward(x)
            if i < last:
                x = np.maximum(z, 0)
                self._acts.append(x)
        return z

    def forward_sampled(self, x, seed, stream):
        """Logits of one thinned network: every dropout draws its mask from
        (``sample_seed(seed, layer)``, ``stream``), whatever the layers'
        own state (which this does not change)."""
        last = len(self.linears) - 1
        for i, lin in enumerate(self.linears):
            if self.ps[i] > 0:
                x = dropnorm.dropout(x, self.ps[i], seed=sample_seed(seed, i), stream=stream,
                                     mode=self.mode, training=True)
            z = x @ lin.weight + lin.bias
            if i < last:
                x = np.maximum(z, 0)
        return z

    def backward(self, dlogits):
        """Back-propagate; fills every Linear's gradients (replacing them)."""
        g = dlogits
        for i in reversed(range(len(self.linears))):
            g = self.linears[i].backward(g)
            if i == 0:
                break
            if self.drops[i] is not None:
                g = self.drops[i].backward(g)
            g = g * (self._acts[i - 1] > 0)

    def sgd_step(self, lr):
        for lin, scale in zip(self.linears, self.lr_scale):
            lin.weight -= (lr * scale) * lin.grad_weight
            lin.bias -= lr * lin.grad_bias


def log_softmax(logits):
    """Row-wise log-softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


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
    return loss, grad.astype(logits.dtype, copy=False), acc


# ---------------------------------------------------------------------------
# batch norm: training and measurement


def _evaluate(net, data, batch_size, keep):
    """Inference mode (batch norm on population statistics): (train loss,
    train acc, test loss, test acc, percentiles of the tracked unit's sigmoid
    input over the test set)."""
    x_train, y_train, x_test, y_test = data
    net.calibrate(x_train, batch_size)
    net.train(False)
    train_loss, _, train_acc = softmax_cross_entropy(net.forward(x_train), y_train)
    logits, z = net.forward(x_test, keep=keep)
    test_loss, _, test_acc = softmax_cross_entropy(logits, y_test)
    net.train(True)
    pcts = np.percentile(z[:, TRACKED_UNIT].astype(np.float64), [15, 50, 85])
    return train_loss, train_acc, test_loss, test_acc, [float(v) for v in pcts]


def train_one(key, data, epochs, seed, lr, hidden, batch_size, progress=None):
    """Train one network of RUNS[key]; returns its per-epoch measurements."""
    label, batch_norm, activation = RUNS[key]
    x_train, y_train = data[0], data[1]
    net = Net(hidden, batch_norm, seed, activation)
    order_rng = np.random.default_rng([seed, 2])  # the same batches for every run
    keep = min(TRACKED_LAYER, len(hidden)) - 1
    out = {"label": label, "batch_norm": batch_norm, "activation": activation,
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
            progress(label, epoch, epochs,
                     f"loss {out['train_loss'][-1]:.3f}, test accuracy {test_acc:.1%}")
    out["seconds"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------------
# dropout: training and measurement


def evaluated_epochs(epochs, every=EVAL_EVERY):
    """The epochs after which the ReLU networks are evaluated: every
    ``every``-th and the last."""
    return sorted(set(range(every, epochs + 1, every)) | {epochs})


def _errors(net, x, y):
    """(error, cross-entropy, float64 probabilities) of net on (x, y) in
    inference mode."""
    net.train(False)
    logits = net.forward(x)
    net.train(True)
    log_p = log_softmax(logits)
    error = float((log_p.argmax(axis=1) != y).mean())
    return error, float(-log_p[np.arange(len(y)), y].mean()), np.exp(log_p)


def train_relu(data, seed, epochs, lr, hidden, batch_size, p_input, p_hidden, mode="inverted",
               every=EVAL_EVERY, keep_probs=False, dtype=DTYPE, label="", progress=None):
    """Train one ReLU network with mini-batch SGD (cross-entropy loss); the
    batches come from ``seed`` alone, so networks of one seed see the same
    batches. Returns (measurements, net, test probabilities at every
    evaluation if keep_probs else None). Measurements: ``epochs`` (the
    evaluated ones), ``train_error``/``train_loss``/``test_error``/
    ``test_loss`` (inference mode, one per evaluated epoch), ``batch_loss``
    (per epoch: mean mini-batch loss in training mode, with the masks),
    ``seconds``. dtype: the network's float type (the data are cast)."""
    x_train, y_train, x_test, y_test = data
    x_train, x_test = x_train.astype(dtype), x_test.astype(dtype)
    net = ReluNet(hidden, seed, p_input, p_hidden, mode, dtype)
    order_rng = np.random.default_rng([seed, 4])
    at = set(evaluated_epochs(epochs, every))
    out = {"seed": seed, "mode": mode, "dtype": np.dtype(dtype).name,
           "p_input": p_input, "p_hidden": p_hidden,
           "epochs": [], "train_error": [], "train_loss": [], "test_error": [],
           "test_loss": [], "batch_loss": []}
    probs = [] if keep_probs else None
    start = time.perf_counter()
    n = len(y_train)
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(n)
        losses = []
        for s in range(0, n - batch_size + 1, batch_size):  # drop the last partial batch
            idx = order[s:s + batch_size]
            loss, dlogits, _ = softmax_cross_entropy(net.forward(x_train[idx]), y_train[idx])
            net.backward(dlogits)
            net.sgd_step(lr)
            losses.append(loss)
        out["batch_loss"].append(float(np.mean(losses)))
        if epoch in at:
            train_error, train_loss, _ = _errors(net, x_train, y_train)
            test_error, test_loss, p = _errors(net, x_test, y_test)
            out["epochs"].append(epoch)
            out["train_error"].append(train_error)
            out["train_loss"].append(train_loss)
            out["test_error"].append(test_error)
            out["test_loss"].append(test_loss)
            if keep_probs:
                probs.append(p)
        if progress is not None:
            progress(label, epoch, epochs, f"test error {out['test_error'][-1]:.1%}"
                     if epoch == epochs else None)
    out["seconds"] = time.perf_counter() - start
    return out, net, probs


def model_averaging(net, x, y, seed, samples=MC_SAMPLES, ks=MC_KS):
    """The weight-scaled network (inference mode) against averages of the
    predicted distributions of k thinned networks (training mode; sample j
    draws its masks from stream j of the sample seeds). Two averages: the
    arithmetic mean of the distributions (Srivastava et al. 2014, section
    7.5) and their normalised geometric mean (the mean of the log
    probabilities, renormalised: what weight scaling computes exactly for a
    single softmax layer, Hinton et al. 2012). Each k uses the
    ``samples // k`` disjoint sets of k samples, and every number is the mean
    over those sets. Returns a dict: ``ks``, ``sets``, ``scaled_test_error``,
    and for each mean ("arithmetic", "geometric") ``kl`` (KL(average ||
    weight-scaled) in nats, mean over the test digits), ``agreement``
    (fraction of test digits where the average and the weight-scaled network
    predict the same class) and ``test_error``, one value per k."""
    net.train(False)
    log_ws = log_softmax(net.forward(x))
    net.train(True)
    ws_pred = log_ws.argmax(axis=1)
    logs = np.stack([log_softmax(net.forward_sampled(x, seed, j)) for j in range(samples)])
    means = ("arithmetic", "geometric")
    out = {"samples": samples, "ks": [], "sets": [],
           "scaled_test_error": float((ws_pred != y).mean())}
    out.update({m: {"kl": [], "agreement": [], "test_error": []} for m in means})
    for k in ks:
        sets = samples // k
        if sets < 1:
            continue
        out["ks"].append(k)
        out["sets"].append(sets)
        found = {m: {"kl": [], "agreement": [], "test_error": []} for m in means}
        for g in range(sets):
            chunk = logs[g * k:(g + 1) * k]
            with np.errstate(divide="ignore"):
                arithmetic = np.log(np.exp(chunk).mean(axis=0))
            geometric = log_softmax(chunk.mean(axis=0))
            for m, log_q in (("arithmetic", arithmetic), ("geometric", geometric)):
                q = np.exp(log_q)
                terms = np.where(q > 0, q * (log_q - log_ws), 0.0)
                pred = log_q.argmax(axis=1)
                found[m]["kl"].append(float(terms.sum(axis=1).mean()))
                found[m]["agreement"].append(float((pred == ws_pred).mean()))
                found[m]["test_error"].append(float((pred != y).mean()))
        for m in means:
            for name, values in found[m].items():
                out[m][name].append(float(np.mean(values)))
    return out


def compare_probs(a, b):
    """For two lists of probability arrays (one per evaluation): the largest
    absolute difference and the fraction of rows with the same argmax, per
    evaluation."""
    diffs = [float(np.abs(p - q).max()) for p, q in zip(a, b)]
    agree = [float((p.argmax(axis=1) == q.argmax(axis=1)).mean()) for p, q in zip(a, b)]
    return {"max_abs_diff": diffs, "agreement": agree}


def run_dropout(seed=SEED, seeds=DROPOUT_SEEDS, epochs=DROPOUT_EPOCHS, lr=DROPOUT_LR,
                hidden=DROPOUT_HIDDEN, batch_size=BATCH_SIZE, n_train=N_TRAIN,
                p_input=P_INPUT, p_hidden=P_HIDDEN, every=EVAL_EVERY,
                mc_samples=MC_SAMPLES, progress=None):
    """The dropout part: for each of the seeds seed .. seed + seeds - 1, the
    float32 ReLU network without and with (inverted) dropout, from the same
    weights and batches; on the first seed also the model-averaging
    measurement and the classic-mode twins (float64 and float32). Returns a
    dict (see :func:`run`)."""
    seed_list = list(range(seed, seed + seeds))
    nets = {"none": [], "dropout": []}
    first_net = data0 = None
    probs = {}
    common = {"epochs": epochs, "lr": lr, "hidden": hidden, "batch_size": batch_size,
              "every": every, "progress": progress}
    drop = {"p_input": p_input, "p_hidden": p_hidden}
    for s in seed_list:
        data = load_data(s, n_train)
        r, _, _ = train_relu(data, s, p_input=0.0, p_hidden=0.0,
                             label=f"seed {s}, no dropout", **common)
        nets["none"].append(r)
        r, net, p = train_relu(data, s, keep_probs=s == seed, label=f"seed {s}, dropout",
                               **drop, **common)
        nets["dropout"].append(r)
        if s == seed:
            first_net, data0, probs["inverted", "float32"] = net, data, p

    # classic vs inverted: float64 (the claim) and float32 (rounding grows)
    classic = {}
    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        modes = ("classic", "inverted") if dtype is np.float64 else ("classic",)
        for mode in modes:
            r, _, p = train_relu(data0, seed, mode=mode, keep_probs=True, dtype=dtype,
                                 label=f"seed {seed}, {mode}, {name}", **drop, **common)
            probs[mode, name] = p
            classic[f"{mode}_{name}"] = r
    classic["inverted_float32"] = nets["dropout"][0]
    for name in ("float64", "float32"):
        classic[name] = compare_probs(probs["classic", name], probs["inverted", name])
    classic["inverted_float32_vs_float64"] = compare_probs(probs["inverted", "float32"],
                                                           probs["inverted", "float64"])

    start = time.perf_counter()
    averaging = model_averaging(first_net, data0[2], data0[3], seed, mc_samples)
    averaging["seconds"] = time.perf_counter() - start
    averaging["seed"] = seed
    summary = {}
    for key, rs in nets.items():
        summary[key] = {name: [_last(r[name]) for r in rs]
                        for name in ("train_error", "train_loss", "test_error", "test_loss")}
    # the gain in points, rounded as printed, so that table and claim agree
    summary["gain_points"] = [_points(a) - _points(b) for a, b in
                              zip(summary["none"]["test_error"],
                                  summary["dropout"]["test_error"])]
    ev = nets["none"][0]["epochs"]
    config = {"seeds": seed_list, "epochs": epochs, "lr": lr, "hidden": list(hidden),
              "batch_size": batch_size, "n_train": len(data0[1]), "n_test": len(data0[3]),
              "p_input": p_input, "p_hidden": p_hidden, "eval_every": every,
              "last": min(LAST, len(ev)), "last_epochs": ev[-min(LAST, len(ev)):],
              "mc_samples": mc_samples, "rounding": ROUNDING, "dtype": np.dtype(DTYPE).name}
    return {"config": config, "nets": nets, "summary": summary, "averaging": averaging,
            "classic": classic}


def _points(fraction):
    """A fraction in percentage points, rounded as ``f"{fraction:.1%}"`` prints it."""
    return float(f"{100 * fraction:.1f}")


def _last(values, last=LAST):
    """Mean of the last ``last`` values (the last evaluations)."""
    n = min(last, len(values))
    return float(np.mean(values[-n:]))


class _OneThread:
    """One thread for BLAS and for dropnorm while training: the tensors are
    tiny (32 x 256), and threads would only wait on each other. The previous
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


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _positive_real(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return v


def _probability(name, value, upper=1.0):
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not 0.0 <= v < upper:
        raise ValueError(f"{name}: expected a number in [0, {upper}), got {value!r}")
    return v


def run(epochs=EPOCHS, seed=SEED, lr=LEARNING_RATE, hidden=HIDDEN, batch_size=BATCH_SIZE,
        n_train=N_TRAIN, runs=tuple(RUNS), parts=PARTS, dropout_epochs=DROPOUT_EPOCHS,
        dropout_lr=DROPOUT_LR, dropout_hidden=DROPOUT_HIDDEN, seeds=DROPOUT_SEEDS,
        p_input=P_INPUT, p_hidden=P_HIDDEN, eval_every=EVAL_EVERY, mc_samples=MC_SAMPLES,
        progress=None):
    """Run the parts named in ``parts`` ("batchnorm", "dropout") and measure.

    Batch norm: ``epochs``, ``lr``, ``hidden`` and ``runs`` (keys of RUNS).
    Dropout: ``dropout_epochs``, ``dropout_lr``, ``dropout_hidden``,
    ``seeds`` (how many: seed .. seed + seeds - 1), ``p_input``,
    ``p_hidden``, ``eval_every``, ``mc_samples``. Both: ``seed``,
    ``batch_size``, ``n_train``. Every argument is checked before anything
    is trained (ValueError naming it).

    Returns a dict: ``config`` (the batch-norm part's settings), ``runs``
    (batch norm; key -> per-epoch lists: ``train_loss`` (mean mini-batch loss
    in training mode), ``train_acc``/``train_eval_loss``/``test_acc``/
    ``test_loss`` (inference mode), ``grad_norm`` (epochs x layers: mean
    Frobenius norm of each Linear's weight gradient), ``preact_percentiles``
    (epochs + 1 rows, from initialisation: 15/50/85th percentiles of the
    tracked activation input (sigmoid or ReLU) over the test set), ``seconds``), ``dropout``
    (``config``; ``nets``: "none"/"dropout" -> one dict per seed, see
    :func:`train_relu`; ``summary``: "none"/"dropout" -> per-seed means of the
    last evaluations, and ``gain_points``, the test error without minus with
    dropout in points, as printed; ``averaging``: see
    :func:`model_averaging`; ``classic``: the first seed's dropout network
    and its classic-mode twin, "classic_float64", "inverted_float64",
    "classic_float32" and "inverted_float32" (each as from
    :func:`train_relu`), and their comparisons "float64", "float32" (classic
    vs inverted) and "inverted_float32_vs_float64", each with
    ``max_abs_diff`` (largest difference of the test probabilities) and
    ``agreement`` (fraction of test digits predicted alike) at every
    evaluation) and ``claims`` (see :func:`claims`). A part not run is
    empty ({}).
    ``progress(label, epoch, epochs, summary)`` is called after every epoch
    of every network (summary: a str after the last epoch, else None)."""
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts: expected some of {list(PARTS)}, got {list(parts)}")
    epochs = _positive_int("epochs", epochs)
    unknown = [k for k in runs if k not in RUNS]
    if unknown:
        raise ValueError(f"runs: unknown {unknown}; expected some of {list(RUNS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    seeds = _positive_int("seeds", seeds)
    seed = int(seed)
    if not 0 <= seed <= 2**32 - seeds:
        raise ValueError(f"seed: expected an integer in [0, 2**32 - seeds], got {seed}")
    lr = _positive_real("lr", lr)
    dropout_lr = _positive_real("dropout_lr", dropout_lr)
    dropout_epochs = _positive_int("dropout_epochs", dropout_epochs)
    eval_every = _positive_int("eval_every", eval_every)
    mc_samples = _positive_int("mc_samples", mc_samples)
    p_input = _probability("p_input", p_input)
    p_hidden = _probability("p_hidden", p_hidden)
    n_train = _positive_int("n_train", n_train)
    batch_size = _positive_int("batch_size", batch_size)
    if not 2 <= batch_size <= n_train:  # batch norm needs two values per batch
        raise ValueError(f"batch_size: expected 2 .. n_train ({n_train}), got {batch_size}")
    hidden = tuple(_positive_int("hidden", h) for h in hidden)
    dropout_hidden = tuple(_positive_int("dropout_hidden", h) for h in dropout_hidden)
    if not hidden or not dropout_hidden:
        raise ValueError("hidden, dropout_hidden: expected at least one hidden layer")

    out = {"config": {}, "runs": {}, "dropout": {}}
    with _OneThread():
        if "batchnorm" in parts:
            data = load_data(seed, n_train)
            out["runs"] = {key: train_one(key, data, epochs, seed, lr, hidden, batch_size,
                                          progress)
                           for key in runs}
            out["config"] = {
                "epochs": epochs, "seed": seed, "lr": lr, "hidden": list(hidden),
                "batch_size": batch_size, "n_train": len(data[1]), "n_test": len(data[3]),
                "tracked_layer": min(TRACKED_LAYER, len(hidden)), "tracked_unit": TRACKED_UNIT,
                "dtype": np.dtype(DTYPE).name}
        if "dropout" in parts:
            out["dropout"] = run_dropout(seed, seeds, dropout_epochs, dropout_lr, dropout_hidden,
                                         batch_size, n_train, p_input, p_hidden, eval_every,
                                         mc_samples, progress)
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


def _seed_range(seeds):
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"


def _last_text(cfg):
    """What the dropout part's averages are over, in words."""
    ev = cfg["last_epochs"]
    if len(ev) == 1:
        return f"the evaluation after epoch {ev[0]}"
    return f"mean of the last {len(ev)} evaluations (epochs {ev[0]}-{ev[-1]})"


def _fused_claim(results):
    """The fused BN + ReLU network's verdict (present when it ran)."""
    runs = results["runs"]
    if "bn_relu" not in runs:
        return []
    cfg = results["config"]
    r = runs["bn_relu"]
    e_r = epochs_to(r["test_acc"])
    return [{
        "part": "batch norm",
        "claim": f"with batch norm and ReLU fused into one layer, the ReLU network trains "
                 f"at learning rate {cfg['lr']} too",
        "evidence": (f"{r['label']}: {TARGET_ACCURACY:.0%} test accuracy at epoch "
                     f"{e_r or 'never'}, {r['test_acc'][-1]:.1%} after epoch {cfg['epochs']}, "
                     f"training loss {r['train_loss'][-1]:.3f}"),
        "holds": bool(e_r is not None and r["test_acc"][-1] >= TARGET_ACCURACY),
    }]


def _batchnorm_claims(results):
    runs = results["runs"]
    cfg = results["config"]
    out = []
    if not ("plain" in runs and "bn" in runs):
        return _fused_claim(results)
    chance = math.log(10)
    p, b = runs["plain"], runs["bn"]
    e_p, e_b = epochs_to(p["test_acc"]), epochs_to(b["test_acc"])
    out.append({
        "part": "batch norm",
        "claim": "batch norm converges faster",
        "evidence": (f"training loss (mean over the mini-batches of epoch {cfg['epochs']}, "
                     "training mode): "
                     f"batch norm {b['train_loss'][-1]:.3f}, plain {p['train_loss'][-1]:.3f}; "
                     f"{TARGET_ACCURACY:.0%} test accuracy at epoch {e_b or 'never'} vs "
                     f"{e_p or 'never'}"),
        "holds": bool(b["train_loss"][-1] < p["train_loss"][-1]
                      and e_b is not None and (e_p is None or e_b < e_p)),
    })
    out.append({
        "part": "batch norm",
        "claim": f"at learning rate {cfg['lr']} the plain network stalls, batch norm trains",
        "evidence": (f"plain's lowest training loss over the {cfg['epochs']} epochs "
                     f"{min(p['train_loss']):.3f} (chance: ln 10 = {chance:.3f}), test accuracy "
                     f"after epoch {cfg['epochs']} {p['test_acc'][-1]:.1%}; batch norm's "
                     f"{b['test_acc'][-1]:.1%}"),
        "holds": bool(min(p["train_loss"]) > 0.9 * chance
                      and b["test_acc"][-1] >= TARGET_ACCURACY),
    })
    gp = np.mean(p["grad_norm"], axis=0)
    gb = np.mean(b["grad_norm"], axis=0)
    rp, rb = gp[0] / gp[-2], gb[0] / gb[-2]
    out.append({
        "part": "batch norm",
        "claim": "the plain network's gradients vanish towards the input; "
                 "batch norm keeps them alive",
        "evidence": (f"|dW1| / |dW{len(gp) - 1}| (first / last hidden layer, each the mean over "
                     f"all training steps): plain {rp:.1e}, batch norm {rb:.2f}"),
        "holds": bool(rp < 0.01 and rb > 0.1),
    })
    pp = np.asarray(p["preact_percentiles"])
    pb = np.asarray(b["preact_percentiles"])
    drift_p = float(np.abs(pp[1:, 1] - pp[1, 1]).max())
    drift_b = float(np.abs(pb[1:, 1] - pb[1, 1]).max())
    spread_p = float(np.mean(pp[1:, 2] - pp[1:, 0]))
    spread_b = float(np.mean(pb[1:, 2] - pb[1:, 0]))
    out.append({
        "part": "batch norm",
        "claim": f"batch norm keeps the sigmoid input's distribution steady "
                 f"(layer {cfg['tracked_layer']}, unit {cfg['tracked_unit']})",
        "evidence": (f"largest move of the median from its value after epoch 1: "
                     f"{drift_b:.2f} with batch norm, {drift_p:.2f} without; 15-85th "
                     f"percentile spread, mean over epochs 1-{cfg['epochs']}: {spread_b:.2f} "
                     f"with, {spread_p:.2f} without"),
        "holds": bool(drift_b < drift_p and spread_b > spread_p),
    })
    return out + _fused_claim(results)


def _dropout_claims(d):
    if not d:
        return []
    cfg = d["config"]
    seeds = cfg["seeds"]
    sm = d["summary"]
    none, drop, gains = sm["none"], sm["dropout"], sm["gain_points"]
    out = []
    n_better = sum(g > 0 for g in gains)
    out.append({
        "part": "dropout",
        "claim": f"dropout lowers the test error of a network that overfits "
                 f"({_seed_range(seeds)}: each and on average)",
        "evidence": (f"test error, {_last_text(cfg)}, mean of {_seed_range(seeds)}: "
                     f"no dropout {np.mean(none['test_error']):.1%}, dropout "
                     f"{np.mean(drop['test_error']):.1%}; lower with dropout for {n_better} of "
                     f"{len(seeds)} seeds, by {min(gains):.1f} to {max(gains):.1f} points; "
                     f"training error {np.mean(none['train_error']):.1%} without and "
                     f"{np.mean(drop['train_error']):.1%} with dropout"),
        "holds": bool(n_better == len(seeds)
                      and np.mean(drop["test_error"]) < np.mean(none["test_error"])),
    })

    av = d["averaging"]
    idx = [av["ks"].index(k) for k in MC_SHOWN if k in av["ks"]]
    if len(idx) >= 2:
        ks = [av["ks"][i] for i in idx]
        geo, ari = av["geometric"], av["arithmetic"]
        kl = [geo["kl"][i] for i in idx]
        agree = [geo["agreement"][i] for i in idx]
        agree_a = [ari["agreement"][i] for i in idx]
        ks_text = ", ".join(f"{k}" for k in ks)
        out.append({
            "part": "dropout",
            "claim": "the average of k sampled dropout networks approaches the weight-scaled "
                     "network as k grows",
            "evidence": (f"seed {av['seed']}, k = {ks_text}: KL(geometric mean || weight-scaled) "
                         + ", ".join(f"{v:.4f}" for v in kl)
                         + " nats (mean over the test digits and the sets of k); the same "
                         "prediction as the weight-scaled network for "
                         + ", ".join(f"{a:.1%}" for a in agree) + " of the test digits (mean "
                         "over the sets; "
                         + ", ".join(f"{a:.1%}" for a in agree_a) + " for the arithmetic mean)"),
            "holds": bool(all(a > b for a, b in zip(kl, kl[1:]))
                          and all(a < b for a, b in zip(agree, agree[1:]))
                          and all(a < b for a, b in zip(agree_a, agree_a[1:]))),
        })
        err = [ari["test_error"][i] for i in idx]
        ws = av["scaled_test_error"]
        out.append({
            "part": "dropout",
            "claim": f"weight scaling matches averaging {ks[-1]} sampled networks (within 1 "
                     "point) and beats one",
            "evidence": (f"seed {av['seed']}, test error: weight-scaled {ws:.1%}; arithmetic "
                         f"mean of k = {ks_text} sampled networks "
                         + ", ".join(f"{e:.1%}" for e in err)
                         + " (mean over the sets of k)"),
            "holds": bool(abs(err[-1] - ws) <= 0.01 and err[0] > ws),
        })

    c = d["classic"]
    c64, c32 = c["float64"], c["float32"]
    n_test = cfg["n_test"]
    last = c["classic_float64"]["epochs"][-1]
    out.append({
        "part": "dropout",
        "claim": "classic dropout (x*(1-p) at test) and inverted dropout train the same model",
        "evidence": (f"seed {seeds[0]}, the same masks, float64: largest |p_classic - "
                     f"p_inverted| over the test digits' class probabilities "
                     f"{max(c64['max_abs_diff']):.1e} at any of the {len(c64['max_abs_diff'])} "
                     f"evaluations up to epoch {last} ({ROUNDING:.0e} allowed as float64 "
                     f"rounding), the same prediction on {round(min(c64['agreement']) * n_test)} "
                     f"of {n_test} test digits at every one. In float32, rounding grows during "
                     f"training: {c32['max_abs_diff'][-1]:.1e} after epoch {last}, and "
                     f"{c['inverted_float32_vs_float64']['max_abs_diff'][-1]:.1e} between the "
                     f"float32 and float64 inverted networks"),
        "holds": bool(max(c64["max_abs_diff"]) < ROUNDING and min(c64["agreement"]) == 1.0),
    })
    return out


def claims(results):
    """The verdicts, one dict per claim whose measurements are present:
    ``part`` ("batch norm" or "dropout"), ``claim`` (the statement),
    ``evidence`` (the measured values, each saying what it averages) and
    ``holds`` (True or False, computed from them)."""
    return _batchnorm_claims(results) + _dropout_claims(results.get("dropout"))


# ---------------------------------------------------------------------------
# output


def _activation_text(runs):
    """The activations of the runs in ``runs``, in words (sigmoid first)."""
    names = {"sigmoid": "sigmoid", "relu": "ReLU"}
    return " / ".join(names[a] for a in names if any(r["activation"] == a for r in runs.values()))


def _units(runs):
    """What the hidden units are, for the part's titles."""
    return f" {_activation_text(runs)} units"


def _format_batchnorm(results):
    runs = results["runs"]
    keys = list(runs)
    cfg = results["config"]
    epochs = cfg["epochs"]
    hidden = cfg["hidden"]
    lines = textwrap.wrap(
        f"BATCH NORM: {len(hidden)} hidden layers of {hidden[0]}{_units(runs)}, "
        f"{cfg['n_train']} training digits, SGD lr {cfg['lr']}, batches of "
        f"{cfg['batch_size']}, {epochs} epochs, seed {cfg['seed']}", 100) + [""]
    lines += ["training loss (mean over the epoch's mini-batches, training mode) /",
              "test accuracy (inference mode), by epoch"]
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

    n_layers = len(hidden) + 1
    lines += ["", "gradient norm |dL/dW| of each layer, mean over all training steps",
              f"(layer 1: input side, layer {n_layers}: softmax)"]
    lines.append(f"{'layer':<14}" + "".join(f"{i:>9}" for i in range(1, n_layers + 1)))
    for k in keys:
        g = np.mean(runs[k]["grad_norm"], axis=0)
        lines.append(f"{runs[k]['label']:<14}" + "".join(f"{v:>9.1e}" for v in g))

    lines += ["", f"{_activation_text(runs)} input of layer {cfg['tracked_layer']}, "
              f"unit {cfg['tracked_unit']}, over the test set: 15th / 50th / 85th percentile"]
    at = sorted({0, 1, epochs // 2, epochs})
    lines.append(f"{'':<14}" + "".join(f"{'epoch ' + str(e):>19}" for e in at))
    for k in keys:
        pc = np.asarray(runs[k]["preact_percentiles"])
        lines.append(f"{runs[k]['label']:<14}" + "".join(
            f"{pc[e, 0]:>7.2f}{pc[e, 1]:>6.2f}{pc[e, 2]:>6.2f}" for e in at))
    return lines


def _format_dropout(d):
    cfg = d["config"]
    seeds = cfg["seeds"]
    hidden = cfg["hidden"]
    nets = d["nets"]
    lines = textwrap.wrap(
        f"DROPOUT: {len(hidden)} hidden ReLU layers of {hidden[0]}, no batch norm, "
        f"{cfg['n_train']} training digits, SGD lr {cfg['lr']}, batches of "
        f"{cfg['batch_size']}, {cfg['epochs']} epochs; dropout {cfg['p_input']} on the "
        f"input and {cfg['p_hidden']} after every hidden layer (inverted); "
        f"{_seed_range(seeds)}", 100) + [""]
    ev = nets["none"][0]["epochs"]
    lines.append(f"test error (inference mode) by epoch, mean of {_seed_range(seeds)}")
    lines.append(f"{'epoch':>5}{'no dropout':>12}{'dropout':>10}")
    shown = sorted({ev[0]} | {ev[min(len(ev) - 1, max(0, round(len(ev) * k / 8) - 1))]
                              for k in range(1, 9)})
    mean_err = {k: np.mean([r["test_error"] for r in nets[k]], axis=0) for k in nets}
    for e in shown:
        i = ev.index(e)
        lines.append(f"{e:>5}{mean_err['none'][i]:>12.1%}{mean_err['dropout'][i]:>10.1%}")

    sm = d["summary"]
    columns = (("train_error", ".1%"), ("train_loss", ".4f"), ("test_error", ".1%"))
    lines += ["", f"each seed in inference mode, {_last_text(cfg)};",
              "gain: test error without minus with dropout, in points"]
    lines.append(f"{'':<6}{'training error':>20}{'training CE':>20}{'test error':>20}")
    lines.append(f"{'seed':<6}" + f"{'none':>10}{'dropout':>10}" * 3 + f"{'gain':>8}")
    for i, s in enumerate(seeds):
        lines.append(f"{s:<6}" + "".join(
            f"{sm['none'][name][i]:>10{fmt}}{sm['dropout'][name][i]:>10{fmt}}"
            for name, fmt in columns) + f"{sm['gain_points'][i]:>8.1f}")
    if len(seeds) > 1:
        lines.append(f"{'mean':<6}" + "".join(
            f"{np.mean(sm['none'][name]):>10{fmt}}{np.mean(sm['dropout'][name]):>10{fmt}}"
            for name, fmt in columns))

    av = d["averaging"]
    lines += [""] + textwrap.wrap(
        f"model averaging: the seed {av['seed']} dropout network after epoch {cfg['epochs']}, "
        f"{cfg['n_test']} test digits. k networks with sampled masks (training mode), their "
        "predicted distributions averaged arithmetically (arith.) or geometrically (geom., "
        f"renormalised); each number the mean over the {av['samples']} // k disjoint sets of "
        f"k of {av['samples']} sampled networks; KL in nats, mean over the test digits", 100)
    lines.append(f"{'':<31}{'test error':>16}{'KL(average || scaled)':>24}"
                 f"{'same prediction':>18}")
    lines.append(f"{'':<31}" + f"{'arith.':>8}{'geom.':>8}" + f"{'arith.':>12}{'geom.':>12}"
                 + f"{'arith.':>9}{'geom.':>9}")
    lines.append(f"{'weight-scaled (inference mode)':<31}{av['scaled_test_error']:>8.1%}")
    ari, geo = av["arithmetic"], av["geometric"]
    for i, k in enumerate(av["ks"]):
        if k in MC_SHOWN:
            name = f"k = {k} ({av['sets'][i]} set{'s' if av['sets'][i] > 1 else ''})"
            lines.append(f"{name:<31}{ari['test_error'][i]:>8.1%}{geo['test_error'][i]:>8.1%}"
                         f"{ari['kl'][i]:>12.4f}{geo['kl'][i]:>12.4f}"
                         f"{ari['agreement'][i]:>9.1%}{geo['agreement'][i]:>9.1%}")

    c = d["classic"]
    n_test = cfg["n_test"]
    lines += [""] + textwrap.wrap(
        f"classic vs inverted dropout, seed {seeds[0]}, the same masks (classic: the weights "
        "after a dropout of p start at inverted's / (1-p) and learn at lr / (1-p)^2; its "
        "inference scales by 1-p). Test digits in inference mode; test error: classic / "
        "inverted; |dp|: largest |p_classic - p_inverted| over digits and classes; same: digits "
        f"predicted alike, of {n_test}; any: the largest |dp| and the fewest same predictions "
        "over all evaluations", 100)
    lines.append(f"{'':<7}{' float64 ':-^30}  {' float32 ':-^30}  {'inverted f32 vs f64':>19}")
    lines.append(f"{'epoch':<7}" + f"{'test error':>13}{'|dp|':>10}{'same':>7}  " * 2
                 + f"{'|dp|':>19}")
    cev = c["classic_float64"]["epochs"]
    at = sorted({0, len(cev) // 4, len(cev) // 2, (3 * len(cev)) // 4, len(cev) - 1})
    ctrl = c["inverted_float32_vs_float64"]
    for i in at:
        line = f"{cev[i]:<7}"
        for name in ("float64", "float32"):
            cl, inv = c[f"classic_{name}"], c[f"inverted_{name}"]
            line += (f"{cl['test_error'][i]:>6.1%}/{inv['test_error'][i]:>6.1%}"
                     f"{c[name]['max_abs_diff'][i]:>10.1e}"
                     f"{round(c[name]['agreement'][i] * n_test):>7}  ")
        lines.append(line + f"{ctrl['max_abs_diff'][i]:>19.1e}")
    lines.append(f"{'any':<7}" + "".join(
        f"{'':>13}{max(c[name]['max_abs_diff']):>10.1e}"
        f"{round(min(c[name]['agreement']) * n_test):>7}  " for name in ("float64", "float32"))
        + f"{max(ctrl['max_abs_diff']):>19.1e}")
    return lines


def format_table(results, width=100):
    """The terminal report: each part's tables (batch norm: loss and test
    accuracy by epoch, the state after the last epoch, gradient norms per
    layer, the tracked activation input's percentiles; dropout: test error by
    epoch, each seed's errors, model averaging, classic vs inverted), then
    the verdicts (evidence wrapped at ``width``)."""
    lines = []
    if results.get("runs"):
        lines += _format_batchnorm(results)
    if results.get("dropout"):
        if lines:
            lines.append("")
        lines += _format_dropout(results["dropout"])
    if results["claims"]:
        lines += ["", "claims (verdicts computed from the numbers above)"]
        part = None
        for c in results["claims"]:
            if c["part"] != part:
                part = c["part"]
                lines.append(part)
            verdict = "yes" if c["holds"] else "NO"
            lines += textwrap.wrap(f"[{verdict:>3}] {c['claim']}", width,
                                   initial_indent="  ", subsequent_indent=" " * 8)
            lines += textwrap.wrap(c["evidence"], width, initial_indent=" " * 8,
                                   subsequent_indent=" " * 8)
    return "\n".join(lines)


def _plot_batchnorm(sub, results):
    runs = results["runs"]
    cfg = results["config"]
    epochs = np.arange(1, cfg["epochs"] + 1)
    grid = sub.add_gridspec(2, 6)
    ax_loss = sub.add_subplot(grid[0, 0:2])
    ax_acc = sub.add_subplot(grid[0, 2:4])
    ax_grad = sub.add_subplot(grid[0, 4:6])
    ax_pp = sub.add_subplot(grid[1, 0:3])
    ax_pb = sub.add_subplot(grid[1, 3:6])

    for k, r in runs.items():
        style = {**STYLES[k], "label": r["label"], "lw": 2}
        ax_loss.plot(epochs, r["train_loss"], **style)
        ax_acc.plot(epochs, np.asarray(r["test_acc"]) * 100, **style)
        g = np.mean(r["grad_norm"], axis=0)
        ax_grad.plot(np.arange(1, len(g) + 1), g, marker="o" if k == "plain" else "s", **style)

    ax_loss.set(title="Training loss (mean over each epoch's mini-batches, training mode)",
                xlabel="epoch",
                ylabel="cross-entropy", yscale="log")
    ax_loss.axhline(math.log(10), color="k", ls=":", lw=1, label="chance (ln 10)", zorder=1)
    ax_acc.set(title="Test accuracy (inference mode)", xlabel="epoch", ylabel="accuracy (%)",
               ylim=(0, 100))
    ax_grad.set(title="Gradient norm per layer (mean over all training steps)",
                xlabel="layer (1 = input side, last = softmax)", ylabel="|dL/dW|",
                yscale="log")

    layer, unit = cfg["tracked_layer"], cfg["tracked_unit"]
    ticks = np.arange(0, cfg["epochs"] + 1)
    panels = ((ax_pp, "plain", "plain"), (ax_pb, "bn", "with batch norm"))
    shown = [np.asarray(runs[key]["preact_percentiles"]) for _, key, _ in panels if key in runs]
    lo = min((pc.min() for pc in shown), default=-1.0)
    hi = max((pc.max() for pc in shown), default=1.0)
    pad = 0.05 * (hi - lo) + 1e-3
    for ax, key, text in panels:
        ax.set(title=f"Sigmoid input, layer {layer} unit {unit}, {text} (test set)",
               xlabel="epoch (0 = initialisation)", ylabel="15 / 50 / 85th percentile",
               ylim=(lo - pad, hi + 5 * pad))
        ax.grid(alpha=0.3)
        if key not in runs:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            continue
        pc = np.asarray(runs[key]["preact_percentiles"])
        color = STYLES[key]["color"]
        ax.fill_between(ticks, pc[:, 0], pc[:, 2], color=color, alpha=0.2,
                        label="15-85th percentile")
        ax.plot(ticks, pc[:, 1], color=color, lw=2, label="median")
        ax.plot(ticks, pc[:, 0], color=color, lw=1, ls=":")
        ax.plot(ticks, pc[:, 2], color=color, lw=1, ls=":")
        ax.legend(loc="upper right", ncol=2, fontsize=9)
        if np.max(pc[1:, 2] - pc[1:, 0]) < 0.01 * (hi - lo):
            ax.text(0.03, 0.05, "15th = 50th = 85th percentile:\nthe same input for every digit",
                    transform=ax.transAxes, fontsize=10, color="k")
    for ax in (ax_loss, ax_acc, ax_grad):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    sub.suptitle(
        f"Batch norm: {len(cfg['hidden'])} hidden layers of {cfg['hidden'][0]}{_units(runs)} "
        f"({cfg['n_train']} training / {cfg['n_test']} test digits), SGD lr {cfg['lr']}, "
        f"batch {cfg['batch_size']}, seed {cfg['seed']}", fontsize=13, fontweight="bold")


def _plot_dropout(sub, d):
    cfg = d["config"]
    nets = d["nets"]
    seeds = cfg["seeds"]
    ev = np.asarray(nets["none"][0]["epochs"])
    axes = sub.subplots(2, 3)
    (ax_err, ax_seed, ax_fit), (ax_kl, ax_mc, ax_cls) = axes
    where = _seed_range(seeds)

    for key in ("none", "dropout"):
        style = {**STYLES[key], "lw": 2}
        err = 100 * np.asarray([r["test_error"] for r in nets[key]])
        ax_err.fill_between(ev, err.min(axis=0), err.max(axis=0), color=style["color"],
                            alpha=0.15, lw=0)
        ax_err.plot(ev, err.mean(axis=0), label=f"{DROPOUT_LABELS[key]} (band: lowest to "
                    "highest seed)", **style)
        fit = np.asarray([r["train_loss"] for r in nets[key]])
        ax_fit.plot(ev, fit.mean(axis=0), label=DROPOUT_LABELS[key], **style)
    tail = len(ev) // 10
    top = 100 * max(np.max(r["test_error"][tail:]) for k in nets for r in nets[k])
    ax_err.set(title=f"Test error (inference mode)\nmean of {where}", xlabel="epoch",
               ylabel="test error (%)", ylim=(0, 1.2 * top))
    ax_fit.set(title=f"Training cross-entropy (inference mode)\nmean of {where}",
               xlabel="epoch", ylabel="cross-entropy", yscale="log")

    sm = d["summary"]
    x = np.arange(len(seeds))
    for i in range(len(seeds)):
        ax_seed.plot([i - 0.12, i + 0.12], [100 * sm["none"]["test_error"][i],
                                            100 * sm["dropout"]["test_error"][i]],
                     color="k", lw=0.8, ls=":")
    for key, dx, marker in (("none", -0.12, "o"), ("dropout", 0.12, "s")):
        ax_seed.plot(x + dx, 100 * np.asarray(sm[key]["test_error"]), marker=marker, ls="none",
                     ms=9, color=STYLES[key]["color"], label=DROPOUT_LABELS[key])
    ax_seed.set(title=f"Test error of each seed\n({_last_text(cfg)})", xlabel="seed",
                ylabel="test error (%)", xticks=x, xticklabels=[str(s) for s in seeds],
                xlim=(-0.6, len(seeds) - 0.4))

    av = d["averaging"]
    ks = np.asarray(av["ks"])
    # at k = 1 both means are the same numbers: hollow squares over filled circles
    means = (("geometric", "tab:purple", "-", {"marker": "o"}),
             ("arithmetic", "tab:orange", "--", {"marker": "s", "ms": 9, "mfc": "none", "mew": 2}))
    for m, color, ls, marker in means:
        ax_kl.plot(ks, av[m]["kl"], color=color, lw=2, ls=ls, label=f"{m} mean of k", **marker)
        ax_mc.plot(ks, 100 * np.asarray(av[m]["test_error"]), color=color, lw=2, ls=ls,
                   label=f"{m} mean of k", **marker)
    ax_kl.set(title=f"Average of k sampled networks vs weight-scaled\n"
                    f"KL(average || weight-scaled), seed {av['seed']}",
              xlabel=f"k, networks with sampled masks (each point: mean over "
                     f"{av['samples']} // k sets)",
              ylabel="nats, mean over the test digits", xscale="log", yscale="log")
    ax_mc.axhline(100 * av["scaled_test_error"], color="tab:green", lw=2, ls="-.",
                  label="weight-scaled (inference mode)")
    ax_mc.axhline(100 * nets["none"][0]["test_error"][-1], color="tab:red", lw=1.5, ls=":",
                  label=f"no dropout, seed {av['seed']}, after epoch {cfg['epochs']}")
    top = 100 * max(max(av[m]["test_error"]) for m, *_ in means)
    ax_mc.set(title=f"Average of k sampled networks vs weight-scaled\n"
                    f"test error, seed {av['seed']}",
              xlabel=f"k, networks with sampled masks (each point: mean over "
                     f"{av['samples']} // k sets)", ylabel="test error (%)", xscale="log",
              ylim=(0, 1.1 * top))

    c = d["classic"]
    cev = c["classic_float64"]["epochs"]
    ax_cls.plot(cev, c["float64"]["max_abs_diff"], color="tab:purple", lw=2, ls="-",
                label="classic vs inverted, float64")
    ax_cls.plot(cev, c["float32"]["max_abs_diff"], color="tab:orange", lw=2, ls="--",
                label="classic vs inverted, float32")
    ax_cls.plot(cev, c["inverted_float32_vs_float64"]["max_abs_diff"], color="k", ls="none",
                marker="x", ms=5, markevery=2, label="inverted, float32 vs float64")
    ax_cls.axhline(ROUNDING, color="tab:purple", lw=1, ls="-.",
                   label="allowed as float64 rounding")
    ax_cls.set(title=f"Classic vs inverted dropout, seed {seeds[0]}, the same masks\n"
                     "test probabilities, inference mode",
               xlabel="epoch", ylabel="largest |p_a - p_b|, test digits and classes",
               yscale="log")
    for ax in (ax_err, ax_seed, ax_fit, ax_kl, ax_mc, ax_cls):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    hidden = cfg["hidden"]
    sub.suptitle(
        f"Dropout: {len(hidden)} hidden ReLU layers of {hidden[0]} ({cfg['n_train']} training "
        f"/ {cfg['n_test']} test digits), SGD lr {cfg['lr']}, batch {cfg['batch_size']}, "
        f"dropout {cfg['p_input']} input / {cfg['p_hidden']} hidden", fontsize=13,
        fontweight="bold")


def plot(results, path):
    """Draw the figure with matplotlib's Agg backend (no display, no pyplot
    state) and write it to path as PNG; returns path. One block of panels per
    part that was run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts = [p for p, present in (("batchnorm", results.get("runs")),
                                  ("dropout", results.get("dropout"))) if present]
    fig = Figure(figsize=(17, 10 * len(parts)), layout="constrained")
    FigureCanvasAgg(fig)
    subs = fig.subfigures(len(parts), 1) if len(parts) > 1 else [fig]
    for sub, part in zip(subs, parts):
        if part == "batchnorm":
            _plot_batchnorm(sub, results)
        else:
            _plot_dropout(sub, results["dropout"])
    fig.savefig(path, dpi=72, format="png")
    return path


class _Progress:
    """One compact line per network: a dot per few epochs, then a summary."""

    def __init__(self, stream, width=40):
        self.stream = stream
        self.width = width
        self.start = 0.0

    def __call__(self, label, epoch, epochs, summary):
        step = max(1, math.ceil(epochs / self.width))
        if epoch == 1:
            self.start = time.perf_counter()
            self.stream.write(f"  {label:<26} ")
        if epoch % step == 0 or epoch == epochs:
            self.stream.write(".")
        if epoch == epochs:
            self.stream.write(f"  {summary}  ({time.perf_counter() - self.start:.1f} s)\n")
        self.stream.flush()


def _check_out(parser, path):
    """--out: a .png file in an existing, writable directory; nothing is
    created here."""
    if not path:
        parser.error("--out: expected a file name such as demo.png, got ''")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"--out: {path!r} is a directory; give a file name such as demo.png")
    if not path.lower().endswith(".png"):
        parser.error(f"--out: expected a file name ending in .png, got {path!r}")
    if not os.path.isdir(folder):
        parser.error(f"--out: the directory {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        parser.error(f"--out: the directory {folder} is not writable")
    return os.path.abspath(path)


def _positive(kind):
    """An argparse type: a positive integer (kind int) or a positive finite
    number (kind float)."""
    what = "a positive integer" if kind is int else "a positive finite number"

    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    convert.__name__ = kind.__name__
    return convert


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dropnorm.demo",
        description="Batch norm: train a deep sigmoid network on the 8x8 digits plain and "
                    "with batch norm. Dropout: train a wide ReLU network without and with "
                    "dropout on several seeds, average sampled networks, and train it again "
                    "in classic mode. Print the measurements and the verdict on each claim, "
                    "and plot them.")
    parser.add_argument("--epochs", type=_positive(int), default=EPOCHS,
                        help=f"epochs of the batch-norm part (default {EPOCHS})")
    parser.add_argument("--lr", type=_positive(float), default=LEARNING_RATE,
                        help=f"SGD learning rate of the batch-norm part (default {LEARNING_RATE})")
    parser.add_argument("--dropout-epochs", type=_positive(int), default=DROPOUT_EPOCHS,
                        help=f"epochs of the dropout part (default {DROPOUT_EPOCHS})")
    parser.add_argument("--dropout-lr", type=_positive(float), default=DROPOUT_LR,
                        help=f"SGD learning rate of the dropout part (default {DROPOUT_LR})")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed of the split, weights, batches and masks (default {SEED}); "
                             "the dropout part also runs the seeds after it")
    parser.add_argument("--seeds", type=_positive(int), default=DROPOUT_SEEDS,
                        help="how many seeds the dropout part compares, from --seed on "
                             f"(default {DROPOUT_SEEDS})")
    parser.add_argument("--part", choices=("all", *PARTS), default="all",
                        help="run one part only (default: both)")
    parser.add_argument("--out", default="dropnorm_demo.png",
                        help="where to write the figure, a .png in an existing directory "
                             "(default dropnorm_demo.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the figure")
    args = parser.parse_args(argv)
    if not 0 <= args.seed <= 2**32 - args.seeds:
        parser.error("--seed: expected an integer in [0, 2**32 - seeds]")
    out = None if args.no_plot else _check_out(parser, args.out)
    try:
        import sklearn  # noqa: F401
        if not args.no_plot:
            import matplotlib  # noqa: F401
    except ImportError as exc:
        missing = {"sklearn": "scikit-learn"}.get(exc.name, exc.name)
        parser.exit(2, f"{parser.prog}: needs scikit-learn and matplotlib ({missing} is "
                       "missing): pip install \".[demo]\" in the source tree, or "
                       "pip install scikit-learn matplotlib\n")

    parts = PARTS if args.part == "all" else (args.part,)
    print(f"dropnorm {dropnorm.__version__} demo on the 8x8 digits ({N_TRAIN} for training, "
          f"the rest for test)")
    start = time.perf_counter()
    results = run(epochs=args.epochs, seed=args.seed, lr=args.lr, parts=parts,
                  dropout_epochs=args.dropout_epochs, dropout_lr=args.dropout_lr,
                  seeds=args.seeds, progress=_Progress(sys.stdout))
    print()
    print(format_table(results))
    if out is not None:
        plot(results, out)
        print(f"\nfigure written to {out}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
