"""A small Llama pre-trained briefly on a corpus, so that its gradients mean something.

Everything is local and deterministic from the seed: the tokenizer is trained on the corpus,
the model is initialised from the seed and trained on every token of the examples exactly as
``ExampleEncoder`` (Tulu format) will present them to warmup and featurization, then saved
with ``save_pretrained`` like any Hugging Face model.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from gradstore.examples import Example, write_jsonl
from gradstore.features.tokenization import ExampleEncoder, tulu_text
from gradstore.files import atomic_write_json, read_json, sha256_bytes, sha256_file
from gradstore.toy.tokenizer import build_tokenizer

MARKER = "toy_model.json"


@dataclass(frozen=True)
class ToySize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    steps: int  # default pre-training steps
    batch_size: int
    learning_rate: float


SIZES = {
    "tiny": ToySize(32, 2, 4, 2, 64, 30, 16, 1e-2),
    "small": ToySize(128, 4, 4, 2, 384, 800, 32, 3e-3),
}


def render(example: Example, eos: str = "</s>") -> str:
    """The example's text as ``ExampleEncoder`` (Tulu template) tokenises it, BOS aside.

    A prompt/completion pair is the reference's ``prompt + " " + completion + eos`` (no role
    markers); messages are Tulu's ``concat_messages``.
    """
    if example.messages is not None:
        return tulu_text(example.messages, eos)
    prompt, completion = example.prompt or "", example.completion or ""
    spaced = prompt.endswith((" ", "\n", "\t")) or completion.startswith((" ", "\n", "\t"))
    return prompt + ("" if spaced else " ") + completion + eos


def corpus_sha256(examples: Sequence[Example]) -> str:
    """The sha256 of the examples' JSONL as ``write_jsonl`` writes it (so it equals the file's)."""
    lines = [json.dumps(e.to_record(), ensure_ascii=False) + "\n" for e in examples]
    return sha256_bytes("".join(lines).encode("utf-8"))


def _batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread: faster for matrices this small (two threads spin-wait on a busy
    machine, several times slower), and one reduction order, so the same weights anywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_toy_model(
    examples: Sequence[Example],
    out_dir: Path,
    seed: int = 0,
    size: str = "small",
    steps: int | None = None,
    max_seq_len: int = 128,
    progress: bool = True,
    batch_size: int | None = None,
) -> Path:
    """Build the tokenizer, pre-train a Llama on all tokens of ``examples``, save both.

    Full-sequence LM loss (prompts included), AdamW with a one-cycle schedule, batches drawn
    with a seeded generator: the same examples and seed give the same weights.
    """
    with _one_thread():
        return _train(examples, Path(out_dir), seed, size, steps, max_seq_len, progress, batch_size)


def _train(
    examples: Sequence[Example],
    out_dir: Path,
    seed: int,
    size: str,
    steps: int | None,
    max_seq_len: int,
    progress: bool,
    batch_size: int | None,
) -> Path:
    if size not in SIZES:
        raise ValueError(f"unknown toy model size {size!r}; known: {sorted(SIZES)}")
    if not examples:
        raise ValueError("cannot pre-train a toy model on no examples")
    spec = SIZES[size]
    steps = steps or spec.steps
    batch_size = batch_size or spec.batch_size
    tokenizer = build_tokenizer([render(e) for e in examples])
    encoded, _ = ExampleEncoder(tokenizer, max_seq_len, "tulu").encode_all(examples)
    rows = [e.input_ids for e in encoded]  # skipped (empty-completion) ones carry no target
    if not rows:
        raise ValueError("every example was skipped (empty completions); nothing to train on")

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=max(256, max_seq_len),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    started, losses = time.perf_counter(), []
    bar = tqdm(range(steps), desc=f"pre-train toy model ({size})", disable=not progress)
    for _ in bar:
        picked = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        ids, mask = _batch([rows[r] for r in picked], tokenizer.pad_token_id)
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-min(10, len(losses)) :]
    atomic_write_json(  # written last: its presence means the directory is complete
        out_dir / MARKER,
        {
            "seed": seed,
            "size": size,
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": spec.learning_rate,
            "max_seq_len": max_seq_len,
            "num_examples": len(examples),
            "parameters": sum(p.numel() for p in model.parameters()),
            "initial_loss": round(losses[0], 4),
            "final_loss": round(sum(tail) / len(tail), 4),  # mean of the last 10 steps
            "train_seconds": round(seconds, 1),
            "corpus_sha256": corpus_sha256(examples),
        },
    )
    return out_dir


PRETRAINING_SEED_OFFSET = 1000


def ensure_toy_assets(
    cache_dir: Path,
    seed: int = 0,
    per_family: int = 150,
    size: str = "small",
    variant: str = "standard",
    steps: int | None = None,
    progress: bool = True,
) -> tuple[Path, Path]:
    """(corpus JSONL, model dir), made once and reused while complete and of the same recipe.

    The model is pre-trained on another sample of the same skills (seed + 1000), never on
    the pool itself: like a real base model, it has not memorised the examples it will be
    asked to rank (pre-training on the pool left the pool's gradients near zero and halved
    the demo's precision). A corpus ``variant`` (``gradstore.toy.corpus.VARIANTS``) gets its
    own pool and a model pre-trained on another sample of that variant; ``steps`` shortens
    pre-training (quick benchmarks).
    """
    from gradstore.toy.corpus import generate_corpus

    cache_dir = Path(cache_dir)
    tag = "" if variant == "standard" else f"{variant}-"
    corpus_path = cache_dir / f"corpus-{tag}{per_family}-{seed}.jsonl"
    shortened = f"-{steps}steps" if steps else ""
    model_dir = cache_dir / f"model-{size}-{tag}{per_family}-{seed}{shortened}"
    recipe = {
        "seed": seed,
        "per_family": per_family,
        "size": size,
        "pretraining_seed": seed + PRETRAINING_SEED_OFFSET,
    }
    if variant != "standard":
        recipe["variant"] = variant
    if steps:
        recipe["steps"] = steps
    marker = cache_dir / f"{model_dir.name}.complete.json"
    if _complete(marker, corpus_path, model_dir, recipe):
        return corpus_path, model_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    write_jsonl(generate_corpus(seed=seed, per_family=per_family, variant=variant), corpus_path)
    pretraining = generate_corpus(
        seed=seed + PRETRAINING_SEED_OFFSET, per_family=per_family, variant=variant
    )
    shutil.rmtree(model_dir, ignore_errors=True)
    train_toy_model(pretraining, model_dir, seed=seed, size=size, steps=steps, progress=progress)
    atomic_write_json(marker, {"recipe": recipe, "corpus_sha256": sha256_file(corpus_path)})
    return corpus_path, model_dir


def _complete(marker: Path, corpus_path: Path, model_dir: Path, recipe: dict) -> bool:
    if not (marker.exists() and corpus_path.exists() and (model_dir / MARKER).exists()):
        return False
    stored = read_json(marker)
    digest = sha256_file(corpus_path)
    return stored.get("recipe") == recipe and stored.get("corpus_sha256") == digest


def describe(model_dir: Path) -> dict:
    """The model's ``toy_model.json``: how it was made and how far its loss fell."""
    return json.loads((Path(model_dir) / MARKER).read_text())
