"""DARTS search steps, first and second order (Liu et al., 2019, "DARTS").

The architecture weights alpha minimise the validation loss L_val(w*(alpha), alpha), where w* are
the network weights trained on the training loss. First order takes w* = w. Second order unrolls
one SGD step, w' = w - xi * dL_train/dw, and uses

    dL_val(w', alpha)/dalpha - xi * d2L_train(w, alpha)/(dalpha dw) . dL_val(w', alpha)/dw'

where the Hessian-vector product is a central finite difference with w+- = w +- eps * dL_val/dw'
and eps = 0.01 / ||dL_val/dw'|| (DARTS, equation 7 and section 2.3).

`Architect.search_step` updates both sets of weights from the gradients at the start of the step,
so a single forward and backward pass on the training batch gives dL_train/dw for both the
unrolled step and the weight update. Two architecture-gradient modes exist:

- `"darts"` (default): alpha moves along the DARTS gradient above and nothing else.
- `"authors"`: the PocketNet authors' search loop calls the architecture optimiser's step after
  the backward pass of the weight loss, so dL_train/dalpha is added to alpha's gradient as well.
  This mode reproduces that behaviour for comparison with their searches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pocketnas.search_space.networks import SearchNetwork

ARCH_GRADIENTS = ("darts", "authors")


@dataclass(frozen=True)
class StepMetrics:
    """Detached losses and logits of one search step, for the epoch metrics."""

    train_loss: torch.Tensor
    train_logits: torch.Tensor
    val_loss: torch.Tensor
    val_logits: torch.Tensor


class Architect:
    """Computes and applies architecture-weight gradients for a `SearchNetwork`."""

    def __init__(
        self,
        model: SearchNetwork,
        optimizer: torch.optim.Optimizer,
        order: str = "first",
        w_momentum: float = 0.9,
        w_weight_decay: float = 3e-4,
        hessian_step: float = 0.01,
        arch_gradient: str = "darts",
    ) -> None:
        if order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', got {order!r}")
        if arch_gradient not in ARCH_GRADIENTS:
            raise ValueError(
                f"arch_gradient must be one of {ARCH_GRADIENTS}, got {arch_gradient!r}"
            )
        self.model = model
        self.optimizer = optimizer
        self.order = order
        self.arch_gradient = arch_gradient
        self.w_momentum = w_momentum
        self.w_weight_decay = w_weight_decay
        # Finite-difference step of the Hessian-vector product, divided by the vector's norm.
        self.hessian_step = hessian_step
        self._virtual: SearchNetwork | None = None

    def search_step(
        self,
        train_batch: tuple[torch.Tensor, torch.Tensor],
        val_batch: tuple[torch.Tensor, torch.Tensor],
        xi: float,
        w_optimizer: torch.optim.Optimizer,
        grad_clip: float | None,
    ) -> StepMetrics:
        """Update the architecture weights, then the network weights, on one pair of batches.

        `xi` is the learning rate of the virtual step (the weight optimiser's current rate).
        """
        model = self.model
        weights = model.weights()
        images, labels = train_batch
        train_logits = model(images)
        train_loss = F.cross_entropy(train_logits, labels)
        leak = self.arch_gradient == "authors"
        grads = torch.autograd.grad(train_loss, weights + (model.alphas() if leak else []))
        weight_grads = list(grads[: len(weights)])

        val_loss, val_logits, alpha_grads = self.architecture_gradient(
            train_batch, val_batch, xi, w_optimizer, weight_grads
        )
        if leak:
            alpha_grads = [a + t for a, t in zip(alpha_grads, grads[len(weights) :], strict=True)]
        self._apply(alpha_grads)

        for weight, grad in zip(weights, weight_grads, strict=True):
            weight.grad = grad
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(weights, grad_clip)
        w_optimizer.step()
        return StepMetrics(train_loss.detach(), train_logits.detach(), val_loss, val_logits)

    def step(
        self,
        train_batch: tuple[torch.Tensor, torch.Tensor],
        val_batch: tuple[torch.Tensor, torch.Tensor],
        xi: float,
        w_optimizer: torch.optim.Optimizer | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the architecture weights once, leaving the network weights unchanged.

        Returns:
            The validation loss and logits that the update was computed from (at the current
            weights for first order, at the unrolled weights for second order), detached.
        """
        loss, logits, alpha_grads = self.architecture_gradient(
            train_batch, val_batch, xi, w_optimizer
        )
        self._apply(alpha_grads)
        return loss, logits

    def architecture_gradient(
        self,
        train_batch: tuple[torch.Tensor, torch.Tensor],
        val_batch: tuple[torch.Tensor, torch.Tensor],
        xi: float,
        w_optimizer: torch.optim.Optimizer | None,
        train_weight_grads: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Return the detached validation loss and logits, and the DARTS gradient of alpha."""
        if self.order == "first":
            images, labels = val_batch
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
            alpha_grads = list(torch.autograd.grad(loss, self.model.alphas()))
        else:
            loss, logits, alpha_grads = self.unrolled_gradient(
                train_batch, val_batch, xi, w_optimizer, train_weight_grads
            )
        return loss.detach(), logits.detach(), alpha_grads

    def _apply(self, alpha_grads: list[torch.Tensor]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for alpha, grad in zip(self.model.alphas(), alpha_grads, strict=True):
            alpha.grad = grad.detach()
        self.optimizer.step()

    def unrolled_gradient(
        self,
        train_batch: tuple[torch.Tensor, torch.Tensor],
        val_batch: tuple[torch.Tensor, torch.Tensor],
        xi: float,
        w_optimizer: torch.optim.Optimizer | None,
        train_weight_grads: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Second-order architecture gradient (see the module docstring).

        `train_weight_grads` is dL_train/dw at the current weights when the caller has it
        already; otherwise it is computed here.
        """
        model = self.model
        virtual = self._virtual_model()
        weights = model.weights()

        # One virtual SGD step with momentum and weight decay, as the weight optimiser would take.
        grads = train_weight_grads
        if grads is None:
            train_images, train_labels = train_batch
            loss = F.cross_entropy(model(train_images), train_labels)
            grads = list(torch.autograd.grad(loss, weights))
        with torch.no_grad():
            for w, vw, g in zip(weights, virtual.weights(), grads, strict=True):
                momentum = 0.0
                if w_optimizer is not None:
                    buffer = w_optimizer.state.get(w, {}).get("momentum_buffer")
                    if buffer is not None:
                        momentum = buffer * self.w_momentum
                vw.copy_(w - xi * (momentum + g + self.w_weight_decay * w))
            for a, va in zip(model.alphas(), virtual.alphas(), strict=True):
                va.copy_(a)

        val_images, val_labels = val_batch
        val_logits = virtual(val_images)
        val_loss = F.cross_entropy(val_logits, val_labels)
        virtual_weights = virtual.weights()
        grads_all = torch.autograd.grad(val_loss, virtual.alphas() + virtual_weights)
        n_alphas = len(model.alphas())
        d_alpha = list(grads_all[:n_alphas])
        d_weights = list(grads_all[n_alphas:])

        hessian = self.hessian_vector_product(d_weights, train_batch)
        with torch.no_grad():
            result = [da - xi * h for da, h in zip(d_alpha, hessian, strict=True)]
        return val_loss, val_logits, result

    def hessian_vector_product(
        self, vector: list[torch.Tensor], train_batch: tuple[torch.Tensor, torch.Tensor]
    ) -> list[torch.Tensor]:
        """d2L_train/(dalpha dw) . vector, by central differences around the current weights."""
        model = self.model
        weights = model.weights()
        norm = torch.cat([v.reshape(-1) for v in vector]).norm()
        eps = self.hessian_step / float(norm) if float(norm) > 0 else 0.0
        images, labels = train_batch

        def alpha_grad() -> tuple[torch.Tensor, ...]:
            loss = F.cross_entropy(model(images), labels)
            return torch.autograd.grad(loss, model.alphas())

        if eps == 0.0:
            return [torch.zeros_like(a) for a in model.alphas()]
        # Restore the weights from a copy, because adding and subtracting eps * v leaves rounding
        # errors behind.
        saved = [w.detach().clone() for w in weights]
        with torch.no_grad():
            for w, v in zip(weights, vector, strict=True):
                w.add_(v, alpha=eps)
        grad_plus = alpha_grad()
        with torch.no_grad():
            for w, v in zip(weights, vector, strict=True):
                w.sub_(v, alpha=2 * eps)
        grad_minus = alpha_grad()
        with torch.no_grad():
            for w, original in zip(weights, saved, strict=True):
                w.copy_(original)
        return [(p - m) / (2 * eps) for p, m in zip(grad_plus, grad_minus, strict=True)]

    def _virtual_model(self) -> SearchNetwork:
        if self._virtual is None:
            self._virtual = copy.deepcopy(self.model)
        # BatchNorm statistics are buffers: the virtual step must see the same ones.
        with torch.no_grad():
            for vb, b in zip(self._virtual.buffers(), self.model.buffers(), strict=True):
                vb.copy_(b)
        self._virtual.train(self.model.training)
        return self._virtual
