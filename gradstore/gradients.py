"""Per-example LoRA gradients: one forward and one backward for a whole padded batch.

For a LoRA layer y = W x + s·B(A x), the gradient of example e's loss is
∂ℓ_e/∂A = Σ_t δA_t x_tᵀ and ∂ℓ_e/∂B = Σ_t δB_t (A x_t)ᵀ, summed over e's tokens, where δ is
the gradient of the loss at the output of the ``lora_A``/``lora_B`` linear maps (the scale s
is already inside δB). Forward hooks keep each map's input and output; one
``autograd.grad`` of Σ_e ℓ_e with respect to those outputs gives every δ, and an einsum per
map gives every example's own gradient — no weight gradient is ever summed over the batch.
``reference_per_example_gradients`` is the slow, obvious version the tests compare against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from gradstore.modeling import lora_parameter_names
from gradstore.tokenization import IGNORE_INDEX, TokenizedExample, collate


def per_example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's labelled tokens: (B,)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_losses = nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    counts = (shift_labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return token_losses.sum(dim=1) / counts


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while featurising (as the reference does), the caller's mode restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class LoraGradientComputer:
    """Batched per-example gradients over every trainable LoRA weight of a PEFT model."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = lora_parameter_names(model)
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
        self.num_parameters = sum(m.weight.numel() for m in self._layers)

    def per_example(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Row e is ∇ℓ_e over all LoRA weights, flattened in canonical order: (B, P) fp32."""
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}

        def keep(position: int):
            def hook(_module, args, output):
                if position in inputs:  # a shared LoRA map: one saved input would be wrong
                    raise ValueError(f"LoRA map {self.names[position]!r} ran twice in a forward")
                inputs[position] = args[0].detach()
                outputs[position] = output

            return hook

        handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(self._layers)]
        try:
            with torch.enable_grad(), eval_mode(self.model):
                logits = self.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
                loss = per_example_losses(logits, batch["labels"]).sum()
                missing = [self.names[i] for i in range(len(self._layers)) if i not in outputs]
                if missing:
                    raise ValueError(f"LoRA maps unused by the forward pass: {missing[:3]}")
                deltas = torch.autograd.grad(loss, [outputs[i] for i in range(len(self._layers))])
                del logits, loss
                outputs.clear()
        finally:
            for handle in handles:
                handle.remove()
        rows, width = batch["input_ids"].shape
        # δ is exactly 0 at pads (no loss reaches them); zeroing x there too keeps a
        # non-finite pad activation from turning 0·x into NaN.
        real = batch["attention_mask"].reshape(rows, width, 1).bool()
        out = torch.empty(rows, self.num_parameters, dtype=torch.float32, device=device)
        offset = 0
        for i, (layer, delta) in enumerate(zip(self._layers, deltas, strict=True)):
            x = inputs.pop(i).reshape(rows, -1, layer.in_features)
            if x.shape[1] == width:
                x = x.masked_fill(~real, 0)
            delta = delta.reshape(rows, -1, layer.out_features)
            size = layer.weight.numel()
            grad = torch.bmm(delta.float().transpose(1, 2), x.float())  # (B, out, in)
            out[:, offset : offset + size] = grad.reshape(rows, size)
            offset += size
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
            yield torch.cat([params[n].grad.float().reshape(-1) for n in names])
    finally:
        model.zero_grad(set_to_none=True)
