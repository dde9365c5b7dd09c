"""Train the same small NumPy MLP with each normalization and compare.

    python examples/compare_norms.py [--epochs 15] [--out compare_norms.png]

Data: scikit-learn's bundled ``load_digits`` (8x8 images, 10 classes; no
download), split 80/20 with a fixed seed. Model: Linear -> norm -> ReLU,
twice, then Linear -> softmax cross-entropy, trained by SGD with momentum
written in NumPy. Every run uses the same seeds, initial weights and learning
rate; only the normalization differs (for WeightNorm the hidden Linear weights
are reparametrized instead of adding a layer). Each norm is trained at batch
size 32 and at batch size 4, where batch norm's statistics are noisy.
"""

import argparse
import time

import numpy as np

import numbanorm as nn

HIDDEN = 128
NORMS = ["none", "BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm", "WeightNorm"]


class Identity:
    training = True

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy

    def train(self, mode=True):
        return self

    def eval(self):
        return self

    params = {}
    grads = {}


def make_norm(name):
    if name == "BatchNorm":
        return nn.BatchNorm(HIDDEN, axis=-1)
    if name == "LayerNorm":
        return nn.LayerNorm(HIDDEN)
    if name == "GroupNorm":
        return nn.GroupNorm(8, HIDDEN, axis=-1)
    if name == "RMSNorm":
        return nn.RMSNorm(HIDDEN)
    return Identity()


class Linear:
    """y = x @ W.T + b with W of shape (out, in), as torch.nn.Linear."""

    def __init__(self, n_in, n_out, rng, weight_norm=False):
        w = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        self.b = np.zeros(n_out, np.float32)
        self.wn = nn.WeightNorm(w, axis=0) if weight_norm else None
        self.w = None if weight_norm else w

    def forward(self, x):
        self.x = x
        self.w_used = self.wn.forward() if self.wn else self.w
        return x @ self.w_used.T + self.b

    def backward(self, dy):
        dw = dy.T @ self.x
        self.grads = {"b": dy.sum(axis=0)}
        if self.wn:
            self.wn.backward(dw)
            self.grads.update(self.wn.grads)
        else:
            self.grads["w"] = dw
        return dy @ self.w_used

    @property
    def params(self):
        p = {"b": self.b}
        p.update(self.wn.params if self.wn else {"w": self.w})
        return p


class MLP:
    def __init__(self, norm, seed, n_in=64, n_out=10):
        rng = np.random.default_rng(seed)
        wn = norm == "WeightNorm"
        self.linears = [Linear(n_in, HIDDEN, rng, wn), Linear(HIDDEN, HIDDEN, rng, wn),
                        Linear(HIDDEN, n_out, rng)]
        self.norms = [make_norm(norm), make_norm(norm)]

    def forward(self, x):
        self.masks = []
        for lin, norm in zip(self.linears, self.norms):
            z = norm.forward(lin.forward(x))
            self.masks.append(z > 0)
            x = z * self.masks[-1]
        return self.linears[-1].forward(x)

    def backward(self, dlogits):
        d = self.linears[-1].backward(dlogits)
        for lin, norm, mask in reversed(list(zip(self.linears[:-1], self.norms, self.masks))):
            d = lin.backward(norm.backward(d * mask))

    def parameters(self):
        """(array, gradient) pairs after a backward pass."""
        for layer in self.linears + self.norms:
            for name, p in layer.params.items():
                yield p, layer.grads[name]

    def train(self, mode=True):
        for norm in self.norms:
            norm.train(mode)


def cross_entropy(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(labels)), labels].mean()
    dlogits = np.exp(logp)
    dlogits[np.arange(len(labels)), labels] -= 1
    return float(loss), (dlogits / len(labels)).astype(np.float32)


def load_data(seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def train(norm, batch_size, epochs, data, lr=0.05, momentum=0.9, seed=0, progress=None):
    x_train, y_train, x_test, y_test = data
    model = MLP(norm, seed)
    velocity = {}
    rng = np.random.default_rng(seed + 1)
    losses = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train(True)
        order = rng.permutation(len(x_train))
        total = 0.0
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            loss, dlogits = cross_entropy(model.forward(x_train[idx]), y_train[idx])
            model.backward(dlogits)
            for p, g in model.parameters():
                v = velocity.setdefault(id(p), np.zeros_like(p))
                v *= momentum
                v -= lr * g
                p += v
            total += loss * len(idx)
        losses.append(total / (len(order) // batch_size * batch_size))
        if progress is not None:
            progress.update(1)
    seconds_per_epoch = (time.perf_counter() - start) / epochs
    model.train(False)
    accuracy = float((model.forward(x_test).argmax(axis=1) == y_test).mean())
    return {"norm": norm, "batch_size": batch_size, "losses": losses,
            "accuracy": accuracy, "seconds_per_epoch": seconds_per_epoch}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["batch_size"] for r in results}, reverse=True)
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(5 * (len(sizes) + 1), 4))
    for ax, bs in zip(axes, sizes):
        for r in results:
            if r["batch_size"] == bs:
                ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=r["norm"])
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title(f"batch size {bs}")
        ax.legend(fontsize=8)
    ax = axes[-1]
    width = 0.8 / len(sizes)
    lowest = 1.0
    for k, bs in enumerate(sizes):
        accs = [next(r["accuracy"] for r in results if r["norm"] == n and r["batch_size"] == bs)
                for n in NORMS]
        lowest = min(lowest, *accs)
        bars = ax.bar(np.arange(len(NORMS)) + k * width, accs, width, label=f"batch {bs}")
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(np.arange(len(NORMS)) + width * (len(sizes) - 1) / 2, NORMS, rotation=30)
    ax.set_ylim(max(0.0, lowest - 0.1), 1.05)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    fig.suptitle("NumPy MLP on load_digits: which normalization?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 4])
    parser.add_argument("--out", default="compare_norms.png")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    data = load_data()
    results = []
    for bs in args.batch_sizes:
        for norm in NORMS:
            with tqdm(total=args.epochs, desc=f"{norm:>10s} batch {bs:>3d}", unit="epoch",
                      leave=False) as bar:
                results.append(train(norm, bs, args.epochs, data, progress=bar))
    print(f"\n{'norm':>10s} {'batch':>5s} {'train loss':>10s} {'test acc':>8s} {'s/epoch':>8s}")
    for r in results:
        print(f"{r['norm']:>10s} {r['batch_size']:>5d} {r['losses'][-1]:>10.4f} "
              f"{r['accuracy']:>8.3f} {r['seconds_per_epoch']:>8.3f}")
    plot(results, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
