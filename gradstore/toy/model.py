"""A small Llama pre-trained briefly on a corpus, so that its gradients mean something.

Everything is local and deterministic from the seed: the tokenizer is trained on the corpus,
the model is initialised from the seed and trained on every token of the Tulu-rendered
examples, then saved with ``save_pretrained`` like any Hugging Face model.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from gradstore.examples import Example, Message, write_jsonl
from gradstore.files import atomic_write_json, read_json, sha256_file
from gradstore.tokenization import tulu_text
from gradstore.toy.tokenizer import build_tokenizer

SIZES = {
    # hidden, layers, heads, kv heads, intermediate, default steps
    "tiny": (32, 2, 4, 2, 64, 30),
    "small": (128, 4, 4, 2, 384, 500),
}
MARKER = "toy_model.json"


def render(example: Example, eos: str = "</s>") -> str:
    """The example as the model will see it in the Tulu format."""
    messages = example.messages or [
        Message(role="user", content=example.prompt or ""),
        Message(role="assistant", content=example.completion or ""),
    ]
    return tulu_text(messages, eos)


def train_toy_model(
    examples: Sequence[Example],
    out_dir: Path,
    seed: int = 0,
    size: str = "small",
    steps: int | None = None,
    batch_size: int = 32,
    max_seq_len: int = 128,
    progress: bool = True,
) -> Path:
    """Build the tokenizer, pre-train the model, save both to ``out_dir``."""
    if size not in SIZES:
        raise ValueError(f"unknown toy model size {size!r}; known: {sorted(SIZES)}")
    hidden, layers, heads, kv_heads, intermediate, default_steps = SIZES[size]
    steps = steps or default_steps
    texts = [render(e) for e in examples]
    tokenizer = build_tokenizer(texts)
    encoded = [tokenizer(t)["input_ids"][:max_seq_len] for t in texts]

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max(256, max_seq_len),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    started, loss_value = time.perf_counter(), float("nan")
    for _ in tqdm(range(steps), desc=f"pre-train toy model ({size})", disable=not progress):
        rows = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        width = max(len(encoded[r]) for r in rows)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(encoded[r])] = torch.tensor(encoded[r])
            mask[i, : len(encoded[r])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    atomic_write_json(
        out_dir / MARKER,
        {
            "seed": seed,
            "size": size,
            "steps": steps,
            "final_loss": round(loss_value, 4),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(time.perf_counter() - started, 1),
        },
    )
    return out_dir


def ensure_toy_assets(
    cache_dir: Path, seed: int = 0, per_family: int = 150, size: str = "small"
) -> tuple[Path, Path]:
    """(corpus JSONL, model dir), made once and reused while complete and of the same recipe."""
    from gradstore.toy.corpus import generate_corpus

    cache_dir = Path(cache_dir)
    corpus_path = cache_dir / f"corpus-{per_family}-{seed}.jsonl"
    model_dir = cache_dir / f"model-{size}-{per_family}-{seed}"
    recipe = {"seed": seed, "per_family": per_family, "size": size}
    marker = cache_dir / f"{model_dir.name}.complete.json"
    if marker.exists() and corpus_path.exists():
        stored = read_json(marker)
        if stored.get("recipe") == recipe and stored.get("corpus") == sha256_file(corpus_path):
            return corpus_path, model_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    examples = generate_corpus(seed=seed, per_family=per_family)
    write_jsonl(examples, corpus_path)
    shutil.rmtree(model_dir, ignore_errors=True)
    train_toy_model(examples, model_dir, seed=seed, size=size)
    atomic_write_json(marker, {"recipe": recipe, "corpus": sha256_file(corpus_path)})
    return corpus_path, model_dir


def describe(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / MARKER).read_text())
