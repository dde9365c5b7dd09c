"""Train a small NumPy conv net with each normalization, over several seeds.

    python examples/conv_norms.py [--epochs 5] [--seeds 3] [--out conv_norms.png]

Data: scikit-learn's bundled ``load_digits`` (8x8 grey images, 10 classes; no
download), split 80/20 with a fixed seed. Model, NCHW:

    conv 3x3, 1 -> 16 channels -> norm -> ReLU
    conv 3x3, 16 -> 32 channels -> norm -> ReLU
    2x2 average pooling -> linear 512 -> 10 -> softmax cross-entropy

trained with Adam (learning rate 1e-3) written in NumPy. The norms come from
numbanorm's layers: none, BatchNorm, LayerNorm over (C, H, W), InstanceNorm
(affine), GroupNorm with groups of 4 channels, RMSNorm over (C, H, W), and
WeightNorm on the convolution weights instead of a norm layer. Each is
trained at batch size 32 and at batch size 4, with the same seeds: seed s
sets the initial weights and the order of the batches for every norm.
"""

import argparse
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import numbanorm as nn

NORMS = ["none", "BatchNorm", "LayerNorm", "InstanceNorm", "GroupNorm", "RMSNorm", "WeightNorm"]
CHANNELS = (16, 32)
SIZE = 8  # the images are 8x8, kept by the padded convolutions


# ------------------------------------------------------------ layers ---


class Conv2d:
    """3x3 convolution, stride 1, zero padding 1, NCHW, as ``torch.nn.Conv2d``
    (a cross-correlation): ``y[n, o] = sum_c,i,j w[o, c, i, j] * xp[n, c, h+i, w+j] + b[o]``.

    Forward and backward are matrix products over the 3x3 windows of the
    padded input (``sliding_window_view``); the input gradient adds each of
    the nine window offsets back into place.
    """

    def __init__(self, c_in, c_out, rng, weight_norm=False):
        scale = np.sqrt(2.0 / (9 * c_in))
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * scale).astype(np.float32)
        self.b = np.zeros(c_out, np.float32)
        self.wn = nn.WeightNorm(w, axis=0) if weight_norm else None
        self.w = None if weight_norm else w
        self.grads = {}

    @property
    def params(self):
        p = {"b": self.b}
        p.update(self.wn.params if self.wn else {"w": self.w})
        return p

    def forward(self, x):
        self.w_used = self.wn() if self.wn else self.w
        n, c, h, w = x.shape
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        # (N, C, H, W, 3, 3) -> rows (n, h, w), columns (c, i, j)
        cols = sliding_window_view(xp, (3, 3), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5)
        self.cols = cols.reshape(n * h * w, c * 9)
        self.x_shape = x.shape
        out = self.cols @ self.w_used.reshape(len(self.b), -1).T + self.b
        return np.ascontiguousarray(out.reshape(n, h, w, -1).transpose(0, 3, 1, 2))

    def backward(self, dy):
        n, c, h, w = self.x_shape
        o = dy.shape[1]
        dy_rows = dy.transpose(0, 2, 3, 1).reshape(-1, o)
        dw = (dy_rows.T @ self.cols).reshape(self.w_used.shape)
        self.grads = {"b": dy_rows.sum(axis=0)}
        if self.wn:
            self.wn.backward(dw)
            self.grads.update(self.wn.grads)
        else:
            self.grads["w"] = dw
        dcols = (dy_rows @ self.w_used.reshape(o, -1)).reshape(n, h, w, c, 3, 3)
        dxp = np.zeros((n, c, h + 2, w + 2), dy.dtype)
        for i in range(3):
            for j in range(3):
                dxp[:, :, i:i + h, j:j + w] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        return dxp[:, :, 1:-1, 1:-1]


class AvgPool2:
    """2x2 average pooling, stride 2."""

    def forward(self, x):
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))

    def backward(self, dy):
        return np.repeat(np.repeat(dy, 2, axis=2), 2, axis=3) * np.float32(0.25)


class Linear:
    """``y = x @ w.T + b``, as ``torch.nn.Linear``."""

    def __init__(self, n_in, n_out, rng):
        self.w = (rng.standard_normal((n_out, n_in)) * np.sqrt(1.0 / n_in)).astype(np.float32)
        self.b = np.zeros(n_out, np.float32)
        self.grads = {}

    @property
    def params(self):
        return {"w": self.w, "b": self.b}

    def forward(self, x):
        self.x = x
        return x @ self.w.T + self.b

    def backward(self, dy):
        self.grads = {"w": dy.T @ self.x, "b": dy.sum(axis=0)}
        return dy @ self.w


class Identity:
    params = {}
    grads = {}

    def __call__(self, x):
        return x

    def backward(self, dy):
        return dy

    def train(self, mode=True):
        return self


def make_norm(name, c):
    shape = (c, SIZE, SIZE)
    if name == "BatchNorm":
        return nn.BatchNorm(c)
    if name == "LayerNorm":
        return nn.LayerNorm(shape)
    if name == "InstanceNorm":
        return nn.InstanceNorm(c, affine=True)
    if name == "GroupNorm":
        return nn.GroupNorm(c // 4, c)
    if name == "RMSNorm":
        return nn.RMSNorm(shape)
    return Identity()  # none, and WeightNorm (on the convolutions instead)


class ConvNet:
    def __init__(self, norm, seed, n_out=10):
        rng = np.random.default_rng(seed)
        wn = norm == "WeightNorm"
        c1, c2 = CHANNELS
        self.convs = [Conv2d(1, c1, rng, wn), Conv2d(c1, c2, rng, wn)]
        self.norms = [make_norm(norm, c1), make_norm(norm, c2)]
        self.pool = AvgPool2()
        self.head = Linear(c2 * (SIZE // 2) ** 2, n_out, rng)

    def forward(self, x):
        self.masks = []
        for conv, norm in zip(self.convs, self.norms):
            z = norm(conv.forward(x))
            self.masks.append(z > 0)
            x = z * self.masks[-1]
        p = self.pool.forward(x)
        self.pooled_shape = p.shape
        return self.head.forward(p.reshape(len(p), -1))

    def backward(self, dlogits):
        d = self.head.backward(dlogits).reshape(self.pooled_shape)
        d = self.pool.backward(d)
        for conv, norm, mask in reversed(list(zip(self.convs, self.norms, self.masks))):
            d = conv.backward(norm.backward(d * mask))

    def parameters(self):
        """(array, gradient) pairs after a backward pass."""
        for layer in self.convs + self.norms + [self.head]:
            for name, p in layer.params.items():
                yield p, layer.grads[name]

    def train(self, mode=True):
        for norm in self.norms:
            norm.train(mode)


class Adam:
    """Adam (Kingma & Ba) with PyTorch's defaults, updating arrays in place."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.state = {}
        self.t = 0

    def step(self, pairs):
        self.t += 1
        b1, b2 = self.betas
        for p, g in pairs:
            m, v = self.state.setdefault(id(p), (np.zeros_like(p), np.zeros_like(p)))
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            m_hat = m / (1 - b1 ** self.t)
            v_hat = v / (1 - b2 ** self.t)
            p -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype)


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
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def train(norm, batch_size, epochs, data, seed, lr=1e-3):
    x_train, y_train, x_test, y_test = data
    model = ConvNet(norm, seed)
    opt = Adam(lr)
    rng = np.random.default_rng(seed + 1000)
    losses = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train(True)
        order = rng.permutation(len(x_train))
        total, count = 0.0, 0
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            loss, dlogits = cross_entropy(model.forward(x_train[idx]), y_train[idx])
            model.backward(dlogits)
            opt.step(model.parameters())
            total += loss * len(idx)
            count += len(idx)
        losses.append(total / count)
    seconds_per_epoch = (time.perf_counter() - start) / epochs
    model.train(False)
    accuracy = float((model.forward(x_test).argmax(axis=1) == y_test).mean())
    return {"norm": norm, "batch_size": batch_size, "seed": seed, "losses": losses,
            "accuracy": accuracy, "seconds_per_epoch": seconds_per_epoch}


# ------------------------------------------------------------ report ---


def summarize(results):
    """Per (norm, batch size): mean and standard deviation over seeds."""
    rows = []
    for bs in sorted({r["batch_size"] for r in results}, reverse=True):
        for norm in NORMS:
            runs = [r for r in results if r["norm"] == norm and r["batch_size"] == bs]
            if not runs:
                continue
            loss = np.array([r["losses"][-1] for r in runs])
            acc = np.array([r["accuracy"] for r in runs])
            sec = np.array([r["seconds_per_epoch"] for r in runs])
            rows.append({"norm": norm, "batch_size": bs, "seeds": len(runs),
                         "loss": (loss.mean(), loss.std()), "accuracy": (acc.mean(), acc.std()),
                         "seconds_per_epoch": sec.mean(),
                         "curves": np.array([r["losses"] for r in runs])})
    return rows


def print_table(rows):
    print(f"\n{'norm':>12s} {'batch':>5s} {'train loss':>17s} {'test accuracy':>17s} {'s/epoch':>8s}")
    for r in rows:
        (lm, ls), (am, as_) = r["loss"], r["accuracy"]
        print(f"{r['norm']:>12s} {r['batch_size']:>5d} {lm:>9.4f} ± {ls:<6.4f}"
              f" {am:>9.3f} ± {as_:<6.3f} {r['seconds_per_epoch']:>8.3f}")


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["batch_size"] for r in rows}, reverse=True)
    colors = dict(zip(NORMS, plt.cm.tab10.colors))
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(5.2 * (len(sizes) + 1), 4.2))
    for ax, bs in zip(axes, sizes):
        for r in rows:
            if r["batch_size"] != bs:
                continue
            curves = r["curves"]
            epochs = np.arange(1, curves.shape[1] + 1)
            ax.plot(epochs, curves.mean(axis=0), color=colors[r["norm"]], label=r["norm"])
            ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0),
                            color=colors[r["norm"]], alpha=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (mean; band: lowest to highest seed)")
        ax.set_title(f"batch size {bs}")
        ax.legend(fontsize=7)
    ax = axes[-1]
    width = 0.8 / len(sizes)
    for k, bs in enumerate(sizes):
        means = [next(r["accuracy"][0] for r in rows if r["norm"] == n and r["batch_size"] == bs)
                 for n in NORMS]
        stds = [next(r["accuracy"][1] for r in rows if r["norm"] == n and r["batch_size"] == bs)
                for n in NORMS]
        ax.bar(np.arange(len(NORMS)) + k * width, means, width, yerr=stds, capsize=2,
               label=f"batch {bs}")
    ax.set_xticks(np.arange(len(NORMS)) + width * (len(sizes) - 1) / 2, NORMS, rotation=30)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 4])
    parser.add_argument("--norms", nargs="+", default=NORMS, choices=NORMS)
    parser.add_argument("--out", default="conv_norms.png")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    start = time.perf_counter()
    data = load_data()
    runs = [(bs, norm, seed) for bs in args.batch_sizes for norm in args.norms
            for seed in range(args.seeds)]
    results = []
    with tqdm(runs, unit="run") as bar:
        for bs, norm, seed in bar:
            bar.set_description(f"{norm:>12s} batch {bs:>2d} seed {seed}")
            results.append(train(norm, bs, args.epochs, data, seed))
    rows = summarize(results)
    print_table(rows)
    plot(rows, args.out, f"NumPy conv net on load_digits, {args.epochs} epochs, "
                         f"{args.seeds} seeds: which normalization?")
    print(f"\nwrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
