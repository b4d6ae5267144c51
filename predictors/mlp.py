"""Ensemble of small MLPs (torch), trained together as one batched network.

Each member has its own initialisation and its own random mini-batches, so the spread of
their predictions (the ensemble std) measures disagreement: large away from the data.
The loss is MSE on standardised accuracy plus a pairwise logistic ranking loss (RankNet),
because a search only needs the *order* of candidates; pairs are weighted by how far apart
their measured accuracies are, so near-ties (mostly measurement noise) count little.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Predictor, register_predictor


class EnsembleMLP(nn.Module):
    """``members`` independent MLPs evaluated with batched matrix products: input (E, B, d)."""

    def __init__(self, members: int, d_in: int, hidden: int, layers: int, generator: torch.Generator):
        super().__init__()
        dims = [d_in] + [hidden] * layers + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(a)  # torch.nn.Linear's default initialisation range
            self.weights.append(nn.Parameter((torch.rand(members, a, b, generator=generator) * 2 - 1) * bound))
            self.biases.append(nn.Parameter((torch.rand(members, 1, b, generator=generator) * 2 - 1) * bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = F.silu(x)
        return x.squeeze(-1)  # (E, B)


def ranking_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """RankNet loss over all ordered pairs of each member's batch, weighted by the target gap."""
    d_pred = pred[:, :, None] - pred[:, None, :]
    d_true = target[:, :, None] - target[:, None, :]
    weight = d_true.clamp(min=0.0, max=1.0)  # only pairs with i better than j; gap capped at 1 std
    return (weight * F.softplus(-d_pred / temperature)).sum() / weight.sum().clamp_min(1e-12)


@register_predictor("mlp")
class MLPEnsemble(Predictor):
    """Ensemble of MLPs; std = disagreement of the members."""

    @classmethod
    def default_hparams(cls) -> dict:
        return {"members": 5, "hidden": 128, "layers": 2, "steps": 2000, "batch_size": 128, "lr": 2e-3,
                "weight_decay": 1e-3, "rank_weight": 1.0, "temperature": 0.2}

    def _fit(self, F_: np.ndarray, z: np.ndarray) -> None:
        h = self.hparams
        g = torch.Generator().manual_seed(self.seed)
        x = torch.as_tensor(F_, dtype=torch.float32)
        t = torch.as_tensor(z, dtype=torch.float32)
        n = x.shape[0]
        self.net = EnsembleMLP(h["members"], x.shape[1], h["hidden"], h["layers"], g)
        opt = torch.optim.AdamW(self.net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=h["steps"])
        batch = min(h["batch_size"], n)
        self.net.train()
        for _ in range(h["steps"]):
            idx = torch.randint(n, (h["members"], batch), generator=g)  # each member its own batch
            pred, target = self.net(x[idx]), t[idx]
            loss = F.mse_loss(pred, target)
            if h["rank_weight"]:
                loss = loss + h["rank_weight"] * ranking_loss(pred, target, h["temperature"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        self.net.eval()

    @torch.no_grad()
    def _predict(self, F_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(F_, dtype=torch.float32)
        out = self.net(x.expand(self.hparams["members"], *x.shape)).double().numpy()
        return out.mean(0), out.std(0)

    def _get_state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def _set_state(self, state: dict) -> None:
        h = self.hparams
        d_in = state["weights.0"].shape[1]
        self.net = EnsembleMLP(h["members"], d_in, h["hidden"], h["layers"], torch.Generator())
        self.net.load_state_dict(state)
        self.net.eval()
