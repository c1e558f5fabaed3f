"""In2Core's speed-up: per-example gradients of the last quarter of the blocks vs all blocks.

A Llama-shaped model (random weights; the cost does not depend on them) with LoRA on the
attention maps; one batch of random token sequences. For each variant, the median wall time
of a forward + backward that hands every per-example gradient to a consumer:

- ``all blocks``: every LoRA map (what the LESS featurizer does per checkpoint);
- ``last quarter, autograd pruning only``: taps on L' only, every LoRA weight trainable
  (autograd skips the backward below L', the forward still records the whole graph);
- ``last quarter, truncated``: the weights outside L' frozen too (``only_trainable``), so
  nothing below L' is recorded: what the ``layer_gradients`` artifact and in2core queries run;
- the end-to-end featurizers: LESS's (all blocks, one projection) vs In2Core's
  (``LayerFeaturizer``, a projection per block).

    python bench/layer_subset.py --json      # a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from gradstore.features.featurizer import CheckpointFeaturizer
from gradstore.features.gradients import LoraGradientComputer
from gradstore.features.layer_gradients import (
    LayerFeaturizer,
    default_layers,
    lora_blocks,
    only_trainable,
)
from gradstore.features.projection import make_projector
from gradstore.features.tokenization import TokenizedExample, collate


def model_and_batch(layers: int, hidden: int, batch: int, length: int):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2000,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=length + 8,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(LlamaForCausalLM(config), lora).eval()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    generator = torch.Generator().manual_seed(1)
    examples = []
    for i in range(batch):
        ids = torch.randint(3, 2000, (length,), generator=generator).tolist()
        examples.append(TokenizedExample(str(i), ids, [-100] * (length // 2) + ids[length // 2 :]))
    return model, examples


def timed(run, repeats: int) -> float:
    run()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, examples = model_and_batch(args.layers, args.hidden, args.batch, args.length)
    batch = collate(examples, 0)
    blocks = lora_blocks(model)
    layers = default_layers(list(blocks))
    subset = [n for layer in layers for n in blocks[layer]]

    def noop(offset: int, grads: torch.Tensor) -> None:
        pass

    full = LoraGradientComputer(model)
    partial = LoraGradientComputer(model, subset)

    def truncated() -> None:
        with only_trainable(model, subset):
            partial.for_each_module(batch, noop)

    less = CheckpointFeaturizer(
        model, make_projector("sjlt", full.num_parameters, args.dim, 0), None, 0, args.batch
    )
    in2core = LayerFeaturizer(
        model,
        layers,
        max(16, args.dim // len(layers)),
        lambda n, d: make_projector("sjlt", n, d, 0),
        0,
        args.batch,
    )
    ms = {
        "all blocks": timed(lambda: full.for_each_module(batch, noop), args.repeats),
        "last quarter, autograd pruning only": timed(
            lambda: partial.for_each_module(batch, noop), args.repeats
        ),
        "last quarter, truncated": timed(truncated, args.repeats),
        "featurize, LESS (all blocks)": timed(
            lambda: less.featurize(examples, ("sgd",)), args.repeats
        ),
        "featurize, In2Core (last quarter, per block)": timed(
            lambda: in2core.featurize(examples), args.repeats
        ),
    }
    report = {
        "benchmark": "layer_subset",
        "machine": f"{platform.machine()} CPU, 1 torch thread",
        "model": {
            "layers": args.layers,
            "hidden": args.hidden,
            "lora_parameters": full.num_parameters,
            "subset_parameters": partial.num_parameters,
            "subset_blocks": layers,
        },
        "batch": args.batch,
        "length": args.length,
        "median_ms": {k: round(v, 1) for k, v in ms.items()},
        "speed_up": {
            "gradients": round(ms["all blocks"] / ms["last quarter, truncated"], 2),
            "featurize": round(
                ms["featurize, LESS (all blocks)"]
                / ms["featurize, In2Core (last quarter, per block)"],
                2,
            ),
        },
    }
    if not args.json:
        for name, value in report["median_ms"].items():
            print(f"{name:48s} {value:9.1f} ms")
        print(report["speed_up"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
