"""Ranking fidelity of each projection against exact (unprojected) LESS scores.

For a model, a pool and a few targets: every pool example's Adam-preconditioned LoRA gradient
Γ(g) and every target's plain gradient g are taken whole (the featurizer with an identity
projection, so the gradients are exactly the store's before projection); the exact score of
(pool i, target t) is the cosine ⟨Γ(g_i), g_t⟩ / (‖·‖‖·‖). Each candidate projection is then
applied to the same vectors through the ``Projector`` protocol, and the fidelity of one
(projection, seed) is the Spearman of each target's pool ranking against the exact one,
averaged over targets; the table reports its mean and spread over ``--seeds`` seeds, and the
projection's cost per example (module by module, as in the featurizer).

- toy: the toy Llama architecture, LoRA r = 8, an adapter and Adam state as after a warmup;
- smollm2: SmolLM2-135M-Instruct, LoRA on q/k/v/o, a short real AdamW warmup on the pool
  (so the Adam moments are a real run's), real examples (Arena-Hard and AlpacaEval pool;
  GSM8K, HumanEval and Arena-Hard writing targets).

    OMP_NUM_THREADS=1 python bench/projection_fidelity.py --model toy --json
    OMP_NUM_THREADS=1 python bench/projection_fidelity.py --model smollm2 --dim 2048 --json

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from gradstore.config import LoraConfig
from gradstore.features.featurizer import CheckpointFeaturizer
from gradstore.features.modeling import attach_new_lora, load_base_model, load_tokenizer
from gradstore.features.preconditioner import AdamPreconditioner
from gradstore.features.projection import Projector, make_projector
from gradstore.features.tokenization import ExampleEncoder, TokenizedExample, collate, pad_token_id

# (label, kind, nonzeros)
CANDIDATES = [
    ("rademacher", "rademacher", None),
    ("sjlt (s=1)", "sjlt", None),
    ("sparse s=2", "sparse", 2),
    ("sparse s=4", "sparse", 4),
    ("sparse s=8", "sparse", 8),
    ("sparse s=16", "sparse", 16),
]


DEFAULT = ("sparse", 4)


class IdentityProjector:
    """The whole gradient, unprojected: ``Projector`` with d = P (the exact reference)."""

    kind, seed = "identity", 0

    def __init__(self, in_dim: int):
        self.in_dim = self.dim = in_dim
        self.device = torch.device("cpu")

    def accumulate(
        self, out: torch.Tensor, x: torch.Tensor, offset: int, reuse_input: bool = False
    ) -> None:
        out[:, offset : offset + x.shape[1]] += x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def adam_warmup(model, examples: list[TokenizedExample], pad: int, steps: int, batch: int):
    """A short AdamW run over the examples: a trained adapter and that run's Adam moments."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    model.train()
    for step in range(steps):
        rows = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
        loss = model(**collate(rows, pad)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    state = [optimizer.state[p] for p in params]
    m = torch.cat([s["exp_avg"].flatten() for s in state])
    v = torch.cat([s["exp_avg_sq"].flatten() for s in state])
    return AdamPreconditioner(m, v)


def toy_setting(args, workdir: Path):
    from gradstore.toy.corpus import generate_corpus
    from gradstore.toy.model import train_toy_model

    examples = generate_corpus(seed=0, per_family=args.pool // 8 + 4)
    model_dir = workdir / "model"
    train_toy_model(examples, model_dir, size="small", steps=1, progress=False)
    tokenizer = load_tokenizer(model_dir)
    encoded, _ = ExampleEncoder(tokenizer, 128, "tulu").encode_all(examples)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(encoded))
    pool = [encoded[i] for i in order[: args.pool]]
    targets = [encoded[i] for i in order[args.pool : args.pool + args.targets]]
    return model_dir, tokenizer, pool, targets


def smollm2_setting(args, workdir: Path):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from real_assets import smollm2_dir

    from gradstore.demo.real import real_setting

    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    setting = real_setting(per_source=args.pool // 4 + 1, targets_per_category=args.targets // 3)
    encoder = ExampleEncoder(tokenizer, args.max_seq_len, "auto")
    pool, _ = encoder.encode_all(setting.pool[: args.pool])
    targets, _ = encoder.encode_all([t for ts in setting.targets.values() for t in ts])
    return model_dir, tokenizer, pool, targets


def whole_gradients(model, adam, pad, pool, targets, n_lora, batch):
    """Normalised Γ(g) of the pool and g of the targets, unprojected: (n, P), (m, P)."""
    featurizer = CheckpointFeaturizer(model, IdentityProjector(n_lora), adam, pad, batch)
    pool_g = featurizer.featurize(pool, kinds=("adam",))["adam"]
    target_g = featurizer.featurize(targets, kinds=("sgd",))["sgd"]
    return torch.from_numpy(pool_g), torch.from_numpy(target_g)


def module_bounds(model) -> list[int]:
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    return [0, *np.cumsum(sizes).tolist()]


def project(projector: Projector, rows: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """Rows projected module slice by module slice, as the featurizer does."""
    out = torch.zeros(rows.shape[0], projector.dim)
    for start, end in itertools.pairwise(bounds):
        projector.accumulate(out, rows[:, start:end], start)
    return torch.nn.functional.normalize(out, dim=1)


def fidelity(exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean over targets of the Spearman of the pool ranking."""
    return float(
        np.mean([spearmanr(exact[:, t], approx[:, t]).statistic for t in range(exact.shape[1])])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["toy", "smollm2"], default="toy")
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=256)
    parser.add_argument("--targets", type=int, default=12)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--warmup-steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kinds", default=None, help="Comma-separated labels to run.")
    parser.add_argument(
        "--gradients", type=Path, default=None,
        help="A file keeping the whole gradients: loaded when it exists, else written.",
    )  # fmt: skip
    parser.add_argument(
        "--save-features", type=Path, default=None,
        help="Write the default projection's seed-0 features and the exact scores (.npz).",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)

    workdir = Path(tempfile.mkdtemp(prefix="gradstore-fidelity-"))
    setting = toy_setting if args.model == "toy" else smollm2_setting
    model_dir, tokenizer, pool, targets = setting(args, workdir)
    pad = pad_token_id(tokenizer)
    model = attach_new_lora(
        load_base_model(model_dir, "cpu"), LoraConfig(r=args.lora_r, alpha=4 * args.lora_r), 0
    )
    adam = adam_warmup(model, pool, pad, args.warmup_steps, args.batch_size)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bounds = module_bounds(model)
    started = time.perf_counter()
    if args.gradients is not None and args.gradients.exists():
        pool_g, target_g = torch.load(args.gradients)
    else:
        pool_g, target_g = whole_gradients(model, adam, pad, pool, targets, n_lora, args.batch_size)
        if args.gradients is not None:
            torch.save((pool_g, target_g), args.gradients)
    gradient_s = time.perf_counter() - started
    exact = (pool_g @ target_g.T).numpy()
    both = torch.cat([pool_g, target_g])

    wanted = set(args.kinds.split(",")) if args.kinds else None
    table = {}
    for label, kind, nonzeros in CANDIDATES:
        if wanted is not None and label not in wanted:
            continue
        values, seconds = [], []
        for seed in range(args.seeds):
            projector = make_projector(kind, n_lora, args.dim, seed, nonzeros=nonzeros)
            project(projector, both[:2], bounds)  # warm its caches
            started = time.perf_counter()
            features = project(projector, both, bounds)
            seconds.append(time.perf_counter() - started)
            f_pool, f_target = features[: len(pool)], features[len(pool) :]
            values.append(fidelity(exact, (f_pool @ f_target.T).numpy()))
            if args.save_features and seed == 0 and (kind, nonzeros) == DEFAULT:
                np.savez(args.save_features, pool=f_pool, targets=f_target, exact=exact)
        table[label] = {
            "mean": round(statistics.mean(values), 4),
            "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "seeds": [round(v, 4) for v in values],
            "ms_per_example": round(1000 * statistics.median(seconds) / len(both), 3),
        }
        print(label, table[label], flush=True)
    result = {
        "benchmark": "projection_fidelity",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "model": args.model,
        "lora_parameters": n_lora,
        "dim": args.dim,
        "pool": len(pool),
        "targets": len(targets),
        "seeds": args.seeds,
        "gradient_ms_per_example": round(1000 * gradient_s / len(both), 2),
        "fidelity": table,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
