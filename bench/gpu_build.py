"""Featurize throughput of a real-size model: examples/s, model FLOPs utilisation, projection share.

A randomly initialised Llama-style model made from a config (speed does not depend on the
weights; ``--model 0.5b`` is about 0.5B parameters), LoRA r = 128 on q/k/v/o as in LESS,
random Adam moments, random tokens of ``--seq-len`` (512) with the second half labelled,
bf16 on CUDA. The featurizer is the build's own (``CheckpointFeaturizer`` with the SJLT
projection to d = 8192, Adam features). MFU counts the LoRA-only per-example gradient as
4 · N · tokens FLOPs (forward 2N, activation backward 2N) against the device's dense bf16
peak (``--peak-tflops``, 989 for H100/H200 SXM).

    python bench/gpu_build.py --json                        # on a GPU host
    python bench/gpu_build.py --model tiny --device cpu     # a smoke run anywhere

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from gradstore.features.featurizer import CheckpointFeaturizer
from gradstore.features.preconditioner import AdamPreconditioner
from gradstore.features.projection import make_projector
from gradstore.features.tokenization import TokenizedExample

MODELS = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "0.5b": (1024, 24, 16, 16, 4096, 32000),
    "tiny": (64, 2, 4, 4, 128, 1000),
}


def make_model(name: str, device: str, dtype: torch.dtype, rank: int):
    hidden, layers, heads, kv, intermediate, vocab = MODELS[name]
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=intermediate,
        vocab_size=vocab,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    lora = PeftLoraConfig(
        r=rank,
        lora_alpha=4 * rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    model = get_peft_model(base, lora)
    for name_, param in model.named_parameters():
        if "lora_B" in name_:
            torch.nn.init.normal_(param, std=0.01)
    return model.eval(), sum(p.numel() for p in base.parameters()), vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="0.5b", choices=sorted(MODELS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, n_params, vocab = make_model(args.model, args.device, dtype, args.rank)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    generator = torch.Generator().manual_seed(0)
    adam = AdamPreconditioner(
        (torch.randn(n_lora, generator=generator) * 1e-4).to(args.device),
        (torch.rand(n_lora, generator=generator) * 1e-8).to(args.device),
    )
    projector = make_projector("sjlt", n_lora, args.dim, 0, args.device)
    featurizer = CheckpointFeaturizer(model, projector, adam, 0, args.batch_size)
    examples = []
    for i in range(args.examples):
        ids = torch.randint(3, vocab, (args.seq_len,), generator=generator).tolist()
        labels = [-100] * (args.seq_len // 2) + ids[args.seq_len // 2 :]
        examples.append(TokenizedExample(str(i), ids, labels))

    def synchronize() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    featurizer.featurize(examples[: args.batch_size])  # warm-up: kernels, projection cache
    synchronize()
    started = time.perf_counter()
    featurizer.featurize(examples)
    synchronize()
    seconds = time.perf_counter() - started
    rate = args.examples / seconds
    # the projection's share, measured as on a GPU it must be (kernels run asynchronously):
    # the same batches with per-example gradients formed but neither preconditioned nor
    # projected, against the whole featurizer
    from gradstore.features.tokenization import collate

    synchronize()
    started = time.perf_counter()
    for start in range(0, args.examples, args.batch_size):
        batch = collate(examples[start : start + args.batch_size], 0)
        featurizer.gradients.for_each_module(batch, lambda offset, grads: None)
    synchronize()
    gradients_only = time.perf_counter() - started
    flops = 4 * n_params * args.seq_len * rate
    result = {
        "benchmark": "gpu_build",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "model": args.model,
        "model_parameters": n_params,
        "lora_parameters": n_lora,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "dim": args.dim,
        "examples_per_s": round(rate, 2),
        "model_tflops": round(flops / 1e12, 1),
        "mfu": round(flops / (args.peak_tflops * 1e12), 4),
        "projection_share": round(max(0.0, 1 - gradients_only / seconds), 4),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if args.device.startswith("cuda")
        else None,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
