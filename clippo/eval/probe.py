"""Heads on frozen features: the reference's closed-form ridge regression (few-shot) and a
linear (or small MLP) head trained by gradient descent (NLU, VQA)."""
import numpy as np
import torch

RIDGE_L2 = 2.0 ** 10  # big_vision's few-shot l2_reg
RIDGE_BIAS = 100.0  # constant feature standing in for the bias: large, so almost unregularised


class RidgeClassifier:
    """big_vision's few-shot linear regression: features whitened with the training set's mean
    and std (+1e-5), a constant feature 100 appended, one-hot targets in {-1, 1}, closed-form
    L2-regularised least squares; the class is the argmax of the regression outputs."""

    def __init__(self, l2=RIDGE_L2):
        self.l2 = float(l2)

    def _design(self, x):
        x = (x - self.mean) / self.std
        return np.pad(x, ((0, 0), (0, 1)), constant_values=RIDGE_BIAS)

    def fit(self, x, y, num_classes):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.int64)
        self.mean = x.mean(0, keepdims=True)
        self.std = x.std(0, keepdims=True) + 1e-5
        a = self._design(x)
        t = 2.0 * np.eye(num_classes)[y] - 1.0
        n, d = a.shape
        if n >= d:  # (A^T A + l2 I)^-1 A^T T
            self.w = np.linalg.solve(a.T @ a + self.l2 * np.eye(d), a.T @ t)
        else:  # A^T (A A^T + l2 I)^-1 T: the same solution, an n x n system
            self.w = a.T @ np.linalg.solve(a @ a.T + self.l2 * np.eye(n), t)
        return self

    def decision_function(self, x):
        return self._design(np.asarray(x, np.float64)) @ self.w

    def predict(self, x):
        return self.decision_function(x).argmax(1)


def make_head(in_dim, out_dim, hidden=0):
    if hidden:
        return torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.GELU(),
                                   torch.nn.Linear(hidden, out_dim))
    return torch.nn.Linear(in_dim, out_dim)


def head_loss(kind, output, target):
    """kind: "classification" (class indices), "regression" (floats) or "soft" (target
    distributions over classes, e.g. VQA answer scores normalised to sum 1)."""
    if kind == "classification":
        return torch.nn.functional.cross_entropy(output, target)
    if kind == "regression":
        return torch.nn.functional.mse_loss(output.squeeze(-1), target)
    if kind == "soft":
        return -(target * torch.log_softmax(output, -1)).sum(-1).mean()
    raise ValueError(f"unknown head kind {kind!r}")


def train_head(features, targets, kind, out_dim, *, hidden=0, epochs=100, lr=1e-2,
               weight_decay=1e-4, batch_size=256, seed=0, device="cpu"):
    """A head fitted on frozen, standardised features by AdamW (seeded, so reproducible).
    Returns a function: features -> outputs (standardised with the training statistics)."""
    x = features.float()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, keepdim=True, unbiased=False) + 1e-5
    x = ((x - mean) / std).to(device)
    y = targets.to(device)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = make_head(x.shape[1], out_dim, hidden).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(x) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(device)
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            loss = head_loss(kind, head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    head.eval()

    @torch.no_grad()
    def apply(feats):
        return head(((feats.float() - mean) / std).to(device)).cpu()
    return apply
