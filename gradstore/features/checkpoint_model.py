"""One base model with the warmup checkpoints' LoRA weights swapped in on demand.

Building and querying both need the model at every checkpoint θ_i. Loading the base model
once and swapping the (small) adapter tensors costs memory for one model, not N, and the
projector — a pure function of (seed, indices) — is shared by all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from gradstore.config import ProjectionConfig
from gradstore.features.checkpoints import WarmupCheckpoint, load_adam_moments
from gradstore.features.featurizer import CheckpointFeaturizer
from gradstore.features.heads import get_head
from gradstore.features.modeling import (
    load_base_model,
    load_tokenizer,
    lora_parameter_names,
    resolve_device,
)
from gradstore.features.preconditioner import AdamPreconditioner, AdamUpdateDirection
from gradstore.features.projection import make_projector
from gradstore.features.tokenization import pad_token_id


class CheckpointModel:
    """The model at each warmup checkpoint, with its projector and Adam preconditioners."""

    def __init__(
        self,
        model_dir: str | Path,
        checkpoints: Sequence[WarmupCheckpoint],
        projection: ProjectionConfig,
        device: str | torch.device | None = None,
        base: torch.nn.Module | None = None,
        lock: threading.Lock | None = None,
    ):
        """``base``: the already loaded base weights to put the adapters on (in place; the
        model pool's), else they are loaded here; ``lock``: the lock of those weights."""
        if not checkpoints:
            raise ValueError("a checkpoint model needs at least one checkpoint")
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.tokenizer = load_tokenizer(model_dir)
        self.pad_token_id = pad_token_id(self.tokenizer)
        self.checkpoints = {c.index: c for c in checkpoints}
        if base is None:
            base = load_base_model(model_dir, self.device)
        first = checkpoints[0]
        self.model = PeftModel.from_pretrained(base, str(first.path), is_trainable=True)
        self.model.to(self.device).eval()
        self._adapter_states = {
            c.index: load_file(str(Path(c.path) / "adapter_model.safetensors")) for c in checkpoints
        }
        self._moments: dict[int, AdamPreconditioner] = {}
        self._directions: dict[int, AdamUpdateDirection] = {}
        self.num_lora_parameters = sum(
            p.numel() for _, p in self.model.named_parameters() if p.requires_grad
        )
        self.parameter_names = lora_parameter_names(self.model)
        self.projector = make_projector(
            projection.kind,
            self.num_lora_parameters,
            projection.dim,
            projection.seed,
            self.device,
            nonzeros=projection.nonzeros,
        )
        self.lock = lock or threading.Lock()
        self._active: int | None = None

    def activate(self, index: int) -> None:
        """Put checkpoint ``index``'s LoRA weights into the model."""
        if self._active == index:
            return
        result = set_peft_model_state_dict(self.model, self._adapter_states[index])
        missing = [k for k in getattr(result, "unexpected_keys", []) or [] if "lora" in k]
        if missing:
            raise ValueError(f"checkpoint {index} has LoRA weights the model lacks: {missing[:3]}")
        self._active = index

    def preconditioner(self, index: int) -> AdamPreconditioner:
        if index not in self._moments:
            m, v = load_adam_moments(self.checkpoints[index].path, self.model)
            self._moments[index] = AdamPreconditioner(m.to(self.device), v.to(self.device))
        return self._moments[index]

    def update_direction(self, index: int) -> AdamUpdateDirection:
        """Influence Distillation's a ⊙ g at checkpoint ``index`` (its second moment)."""
        if index not in self._directions:
            checkpoint = self.checkpoints[index]
            _, v = load_adam_moments(checkpoint.path, self.model)
            self._directions[index] = AdamUpdateDirection(v.to(self.device), checkpoint.step)
        return self._directions[index]

    def featurizer(
        self,
        index: int,
        batch_size: int,
        adam: bool = False,
        batch_tokens: int | None = None,
        update: bool = False,
        heads: Sequence[str] = (),
    ) -> CheckpointFeaturizer:
        """A featurizer with checkpoint ``index`` active for the gradient ``heads`` (names in
        ``gradstore.features.heads.HEADS``; ``adam`` and ``update`` ask for those two); a
        head's state (Adam moments, ...) is loaded only when it is asked for."""
        self.activate(index)
        names = [*heads, *(["adam"] if adam else []), *(["update"] if update else [])]
        transforms = {name: get_head(name).preconditioner(self, index) for name in names}
        return CheckpointFeaturizer(
            self.model,
            self.projector,
            None,
            self.pad_token_id,
            batch_size,
            batch_tokens,
            transforms=transforms,
        )
