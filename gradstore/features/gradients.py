"""Per-example LoRA gradients: one forward and one backward for a whole padded batch.

For a LoRA layer y = W x + s·B(A x), the gradient of example e's loss is
∂ℓ_e/∂A = Σ_t δA_t x_tᵀ and ∂ℓ_e/∂B = Σ_t δB_t (A x_t)ᵀ, summed over e's tokens, where δ is
the gradient of the loss at the output of the ``lora_A``/``lora_B`` linear maps (the scale s
is already inside δB). Forward hooks keep each map's input and tap its output; one backward
of Σ_e ℓ_e hands every δ to a hook as it is computed, and a batched product per map gives
every example's own gradient — no weight gradient is ever summed over the batch.
``reference_per_example_gradients`` is the slow, obvious version the tests compare against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from gradstore.features.losses import completion_losses, per_example_losses
from gradstore.features.modeling import lora_parameter_names
from gradstore.features.tokenization import TokenizedExample, collate


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while featurising (as the reference does), the caller's mode restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


ModuleGradientConsumer = Callable[[int, torch.Tensor], None]


class _Tap(torch.autograd.Function):
    """Identity on a LoRA map's output whose backward hands δ to a callback.

    Its second input, a zero scalar leaf shared by every tap, is what the backward asks a
    gradient for: every LoRA output lies on a path to it, so autograd visits every tap.
    """

    @staticmethod
    def forward(ctx, output, anchor, callback):  # type: ignore[override]
        ctx.callback = callback
        return output.view_as(output)

    @staticmethod
    def backward(ctx, delta):  # type: ignore[override]
        ctx.callback(delta)
        return delta, delta.new_zeros(()), None


class LoraGradientComputer:
    """Batched per-example gradients over every trainable LoRA weight of a PEFT model.

    ``for_each_module`` hands each LoRA map's (B, out·in) per-example gradient to a consumer
    as soon as backward reaches that map, then drops it: the whole (B, P) gradient never
    exists. Each map's output passes through a ``_Tap`` that also takes a zero scalar leaf,
    and the backward asks for that leaf's gradient only, so autograd visits every tap
    without computing any summed weight gradient.

    ``parameter_names`` restricts it to a subset of the LoRA weights (canonical order kept,
    offsets within the subset); see ``gradstore.features.layer_gradients`` for stopping the backward
    at the earliest of them.
    """

    def __init__(self, model: nn.Module, parameter_names: Sequence[str] | None = None):
        self.model = model
        names = lora_parameter_names(model)
        if parameter_names is not None:
            unknown = sorted(set(parameter_names) - set(names))
            if unknown:
                raise ValueError(f"not trainable LoRA weights of the model: {unknown[:3]}")
            names = [n for n in names if n in set(parameter_names)]
        self.names = names
        modules = dict(model.named_modules())
        self._layers: list[nn.Linear] = []
        for name in self.names:
            module_name, _, leaf = name.rpartition(".")
            module = modules.get(module_name)
            if leaf != "weight" or not isinstance(module, nn.Linear) or module.bias is not None:
                raise ValueError(
                    f"trainable parameter {name!r} is not the weight of a bias-free Linear "
                    "(a LoRA A/B map); per-example gradients support LoRA weights only"
                )
            self._layers.append(module)
        sizes = [m.weight.numel() for m in self._layers]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sizes = sizes
        self.num_parameters = sum(sizes)

    def for_each_module(
        self, batch: dict[str, torch.Tensor], consume: ModuleGradientConsumer
    ) -> None:
        """Call ``consume(offset, grads)`` once per LoRA map with its (B, size) fp32 rows.

        ``offset`` is the map's position in the canonical flattening of all LoRA weights;
        ``grads`` is a fresh tensor the consumer may overwrite.
        """
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        rows, width = batch["input_ids"].shape
        # δ is exactly 0 at pads (no loss reaches them); zeroing x there too keeps a
        # non-finite pad activation from turning 0·x into NaN.
        real = batch["attention_mask"].reshape(rows, width, 1).bool()
        anchor = torch.zeros((), device=device, requires_grad=True)
        seen: set[int] = set()
        done: set[int] = set()

        def per_example(position: int, x: torch.Tensor, delta: torch.Tensor) -> None:
            layer = self._layers[position]
            x = x.reshape(rows, -1, layer.in_features)
            if x.shape[1] == width:
                x = x.masked_fill(~real, 0)
            delta = delta.reshape(rows, -1, layer.out_features)
            grad = torch.bmm(delta.float().transpose(1, 2), x.float())  # (B, out, in)
            consume(self.offsets[position], grad.reshape(rows, self.sizes[position]))
            done.add(position)

        def tap(position: int):
            def hook(_module, args, output):
                if position in seen:  # a shared LoRA map: one saved input would be wrong
                    raise ValueError(f"LoRA map {self.names[position]!r} ran twice in a forward")
                seen.add(position)
                x = args[0].detach()
                return _Tap.apply(output, anchor, lambda delta: per_example(position, x, delta))

            return hook

        handles = [layer.register_forward_hook(tap(i)) for i, layer in enumerate(self._layers)]
        try:
            with torch.enable_grad(), eval_mode(self.model):
                loss = completion_losses(self.model, batch).sum()
                missing = [self.names[i] for i in range(len(self._layers)) if i not in seen]
                if missing:
                    raise ValueError(f"LoRA maps unused by the forward pass: {missing[:3]}")
                torch.autograd.grad(loss, anchor)
        finally:
            for handle in handles:
                handle.remove()
        if len(done) != len(self._layers):  # a map whose output never reached the loss
            missing = [self.names[i] for i in range(len(self._layers)) if i not in done]
            raise ValueError(f"LoRA maps without a gradient from the loss: {missing[:3]}")

    def per_example(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Row e is ∇ℓ_e over all LoRA weights, flattened in canonical order: (B, P) fp32.

        Materialises the whole gradient: for tests and small models; the featurizer uses
        ``for_each_module``.
        """
        rows = batch["input_ids"].shape[0]
        device = next(self.model.parameters()).device
        out = torch.empty(rows, self.num_parameters, dtype=torch.float32, device=device)

        def write(offset: int, grads: torch.Tensor) -> None:
            out[:, offset : offset + grads.shape[1]] = grads

        self.for_each_module(batch, write)
        return out


def reference_per_example_gradients(
    model: nn.Module, examples: Sequence[TokenizedExample], pad_token_id: int
) -> torch.Tensor:
    """One example at a time with plain autograd: (n, P) fp32, canonical order."""
    return torch.stack(list(iter_reference_gradients(model, examples, pad_token_id)))


def iter_reference_gradients(
    model: nn.Module, examples: Sequence[TokenizedExample], pad_token_id: int
) -> Iterator[torch.Tensor]:
    """The reference's loop: one forward and ``.backward()`` per example, yielding (P,) rows."""
    device = next(model.parameters()).device
    names = lora_parameter_names(model)
    params = dict(model.named_parameters())
    try:
        for example in examples:
            batch = {k: v.to(device) for k, v in collate([example], pad_token_id).items()}
            model.zero_grad(set_to_none=True)
            with torch.enable_grad(), eval_mode(model):
                logits = model(input_ids=batch["input_ids"]).logits
                per_example_losses(logits, batch["labels"]).sum().backward()
            yield torch.cat([params[n].grad.float().reshape(-1) for n in names])  # type: ignore[union-attr]
    finally:
        model.zero_grad(set_to_none=True)
