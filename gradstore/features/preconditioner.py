"""Adam preconditioning of per-example gradients, as the LESS reference featurises them.

Γ = (β1·m + (1−β1)·g) / sqrt(β2·v + (1−β2)·g² + ε): the direction one more Adam step would
take on this example alone from the checkpoint's moments m, v. As in the reference, there is
no bias correction and ε sits inside the square root. ``apply_`` works on one module's slice
of the gradient in place (one temporary of the slice's size), so featurization never holds
more than one module's (B, size) rows.
"""

from __future__ import annotations

import torch


class AdamPreconditioner:
    def __init__(
        self,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ):
        if exp_avg.shape != exp_avg_sq.shape or exp_avg.dim() != 1:
            raise ValueError("Adam moments must be two flat vectors of the same length")
        self.exp_avg = exp_avg.float()
        self.exp_avg_sq = exp_avg_sq.float()
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        # the terms of Γ that do not depend on g, computed once for every example
        self._beta1_m = beta1 * self.exp_avg
        self._beta2_v_eps = beta2 * self.exp_avg_sq + eps

    def apply_(self, grads: torch.Tensor, offset: int) -> torch.Tensor:
        """Γ in place for the rows (B, w) of parameters [offset, offset + w); returns ``grads``."""
        width = grads.shape[1]
        beta1_m = self._beta1_m[offset : offset + width]
        beta2_v_eps = self._beta2_v_eps[offset : offset + width]
        denominator = torch.addcmul(beta2_v_eps, grads, grads, value=1 - self.beta2).sqrt_()
        torch.add(beta1_m, grads, alpha=1 - self.beta1, out=grads)
        return grads.div_(denominator)

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        """(B, P) plain gradients → (B, P) Adam update directions."""
        m = self.exp_avg.to(grads.device)
        v = self.exp_avg_sq.to(grads.device)
        numerator = self.beta1 * m + (1 - self.beta1) * grads
        return numerator / torch.sqrt(self.beta2 * v + (1 - self.beta2) * grads.square() + self.eps)


class AdamUpdateDirection:
    """Influence Distillation's Adam direction a ⊙ g, a = ((1−β1)/(1−β1^{t+1})) / (√v̂ + ε).

    The part of one more Adam step from the checkpoint's state that depends on the example's
    gradient g (the momentum term is the same for every example, so it drops out of every
    comparison); v̂ = v / (1 − β2^{t+1}) with t the optimizer steps taken. Unlike LESS's Γ,
    g does not enter the denominator. ``step=None`` (checkpoints that did not record it)
    means no bias correction, the limit of a long run.
    """

    def __init__(
        self,
        exp_avg_sq: torch.Tensor,
        step: int | None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ):
        if exp_avg_sq.dim() != 1:
            raise ValueError("the second Adam moment must be a flat vector")
        first = 1.0 if step is None else 1 - beta1 ** (step + 1)
        second = 1.0 if step is None else 1 - beta2 ** (step + 1)
        v_hat = exp_avg_sq.float() / second
        self.scale = ((1 - beta1) / first) / (v_hat.sqrt() + eps)

    def apply_(self, grads: torch.Tensor, offset: int) -> torch.Tensor:
        """a ⊙ g in place for the rows (B, w) of parameters [offset, offset + w)."""
        return grads.mul_(self.scale[offset : offset + grads.shape[1]].to(grads.device))

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        """(B, P) plain gradients → (B, P) update directions."""
        return grads * self.scale.to(grads.device)
