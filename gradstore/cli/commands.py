"""The ``gradstore`` command line: toy assets, build, select, demo, and the service commands.

The service commands (serve, api, worker, db) come from the ``gradstore.cli`` entry point
group, which the service and worker packages fill: the core never imports them.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer

from gradstore.assets.data_cli import data_app
from gradstore.assets.models_cli import models_app
from gradstore.cli.common import (
    METHODS_TEXT,
    Explain,
    Fraction,
    Method,
    Options,
    StoreDir,
    Targets,
    TopK,
    check_jsonl_file,
    check_methods,
    check_store_dir,
    read_targets,
)
from gradstore.cli.flags import with_build_config
from gradstore.cli.remote import remote_app
from gradstore.config import BuildConfig
from gradstore.extras import needs_extra

app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    add_completion=False,
    help="Choose instruction-tuning data with a LESS gradient datastore: toy assets, build, "
    "select, demo, and the service (serve, api, worker, db).\n\n"
    "An error is one or two lines; add --debug (or set GRADSTORE_DEBUG=1) to see its traceback.",
)
toy_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Offline toy corpus and model (docs/toy.md)."
)
app.add_typer(toy_app, name="toy")
app.add_typer(remote_app, name="remote")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


@toy_app.command("corpus")
def toy_corpus(
    out: Annotated[Path, typer.Option(help="JSONL file to write.")],
    seed: Annotated[int, typer.Option(help="Seed; same seed, same corpus.")] = 0,
    per_family: Annotated[int, typer.Option(help="Examples per skill family.")] = 150,
) -> None:
    """Write the toy instruction corpus (several skills × shared surface styles)."""
    from gradstore.examples import write_jsonl
    from gradstore.toy.corpus import generate_corpus

    examples = generate_corpus(seed=seed, per_family=per_family)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(examples, out)
    typer.echo(f"wrote {len(examples)} examples to {out}")


@toy_app.command("targets")
def toy_targets(
    out: Annotated[Path, typer.Option(help="JSONL file to write.")],
    per_family: Annotated[int, typer.Option(help="Targets per skill family.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed; use another than the pool's.")] = 1,
    exclude: Annotated[
        Path | None, typer.Option(help="A pool (JSONL) whose examples no target may repeat.")
    ] = None,
) -> None:
    """Write held-out targets, each with its family as 'subtask', for select."""
    from gradstore.examples import read_jsonl, write_jsonl
    from gradstore.toy.corpus import generate_targets

    pool = read_jsonl(exclude) if exclude else []
    targets = generate_targets(seed=seed, per_family=per_family, exclude=pool)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(targets, out)
    typer.echo(f"wrote {len(targets)} targets to {out}")


@toy_app.command("model")
def toy_model(
    out: Annotated[Path, typer.Option(help="Directory to save the model and tokenizer in.")],
    corpus: Annotated[
        Path | None, typer.Option(help="JSONL to build the tokenizer and pre-train on.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the corpus (if generated) and training.")] = 0,
    size: Annotated[str, typer.Option(help="Model size: small or tiny.")] = "small",
    steps: Annotated[int | None, typer.Option(help="Pre-training steps (default: per size).")] = (
        None
    ),
) -> None:
    """Build a tokenizer and pre-train a small Llama on a corpus (the toy one by default)."""
    from gradstore.examples import read_jsonl
    from gradstore.toy.corpus import generate_corpus
    from gradstore.toy.model import train_toy_model

    examples = read_jsonl(corpus) if corpus else generate_corpus(seed=seed)
    path = train_toy_model(examples, out, seed=seed, size=size, steps=steps)
    typer.echo(f"saved the toy model to {path}")


@app.command()
@needs_extra("cpu or gpu")
@with_build_config
def build(
    dataset: Annotated[
        Path, typer.Option(callback=check_jsonl_file, help="Pool of training examples (JSONL).")
    ],
    out: Annotated[Path, typer.Option(help="Datastore directory to create.")],
    model: Annotated[
        Path | None,
        typer.Option(
            help="Local Hugging Face causal-LM directory; not needed when every --methods "
            "reads the text alone (bm25 dsir random)."
        ),
    ] = None,
    warmup_from: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="DIR",
            help="Reuse an existing LESS warmup: a checkpoint dir (repeat per epoch).",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: auto).")] = (
        None
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Replace a datastore already in --out.")
    ] = False,
    config: BuildConfig = BuildConfig(),
) -> None:
    """Build a LESS datastore: warmup, per-example gradients at each checkpoint, index.

    Every field of the build configuration is a flag below (the API request has the same
    fields and defaults); --config reads them from JSON first. An existing --out resumes
    only a build with the same inputs and flags; --force replaces it.
    """
    from gradstore.build import build_all
    from gradstore.threads import threads_per_process, use_threads

    use_threads(threads_per_process(1))  # GRADSTORE_TORCH_THREADS, else every usable core
    summary, manifest = build_all(
        out, dataset, model, config, warmup_from or (), device=device, force=force
    )
    typer.echo(f"datastore ready at {out}")
    typer.echo(
        f"  examples: {manifest.num_examples} (skipped {len(summary.skipped)}, "
        f"truncated to --max-seq-len {summary.truncated})  "
        f"checkpoints: {len(manifest.checkpoints)}  dim: {manifest.dim}  "
        f"LoRA parameters: {manifest.lora_parameters}  index: {manifest.config.index_factory}"
    )
    for skipped in summary.skipped[:10]:
        typer.echo(f"  skipped {skipped.id}: {skipped.reason}")


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(callback=check_store_dir, help="Datastore directory.")],
) -> None:
    """Check a datastore's files and how it was built (reads it all).

    Every file against its manifest's sha256, then the recorded configuration against the
    checkpoints' own records (learning rates, optimizer steps, the warmup sample). Opening a
    store for queries only checks that every file exists with its size; run this after
    copying a store or when its disk is suspect.
    """
    from gradstore.store.datastore import Datastore

    datastore = Datastore.open(store, verify=True)
    typer.echo(f"{store}: {len(datastore.manifest.files)} files match the manifest")


@app.command()
@needs_extra("cpu or gpu")
def select(
    store: StoreDir,
    targets: Targets,
    top_k: TopK = None,
    fraction: Fraction = None,
    method: Method = "less",
    options: Options = None,
    explain: Explain = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: Annotated[str | None, typer.Option(help="Device for target gradients.")] = None,
) -> None:
    """Rank the pool for the targets: the top examples, best first.

    Give --top-k or --fraction (one of them). Each line is rank, score, subtask, id.
    """
    examples = read_targets(targets)
    from gradstore.query import QueryEngine
    from gradstore.selection import run_selection
    from gradstore.store.datastore import Datastore

    engine = QueryEngine(Datastore.open(store), device=device)
    result = run_selection(
        engine,
        examples,
        method=method,
        top_k=top_k,
        fraction=fraction,
        options=options,  # type: ignore[arg-type]  # the callback parsed it into a dict
        explain=explain,
    )
    selected = [
        {"id": s.id, "score": s.score, "subtask": s.subtask}
        | ({"weight": s.weight} if s.weight is not None else {})
        for s in result.selected
    ]
    if as_json:
        answer = {
            "method": result.method,
            "selected": selected,
            "num_candidates": result.num_candidates,
            "timings_ms": result.timings_ms,
            "details": result.details,
        }
        if result.explanation is not None:
            answer["explanation"] = result.explanation
        typer.echo(json.dumps(answer))
        return
    why = (result.explanation or {}).get("examples") or [{}] * len(selected)
    for rank, (item, reason) in enumerate(zip(selected, why, strict=True), 1):
        line = f"{rank:6d}  {item['score']:+.6f}  {item['subtask']:<20}  {item['id']}"
        if reason.get("target") is not None:
            line += f"  (for target {reason['target']}, {reason['share']:.0%} of its score)"
        typer.echo(line)


@app.command()
@needs_extra("cpu or gpu")
def demo(
    work_dir: Annotated[Path, typer.Option(help="Where the toy assets and store go.")] = Path(
        ".gradstore/demo"
    ),
    per_family: Annotated[int, typer.Option(help="Pool examples per toy family.")] = 150,
    seed: Annotated[int, typer.Option(help="Seed of everything.")] = 0,
    fraction: Annotated[float, typer.Option(help="Share of the pool to select.")] = 0.05,
    json_out: Annotated[Path | None, typer.Option(help="Also write the results as JSON.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="A real model instead of the toy assets: a known name (gradstore models "
            "list) or a local model directory; the pool and targets are then real data "
            "(Arena-Hard, AlpacaEval, GSM8K, HumanEval; docs/data.md)."
        ),
    ] = None,
    per_source: Annotated[
        int,
        typer.Option(help="With --model: pool examples per Arena-Hard category and of AlpacaEval."),
    ] = 16,
) -> None:
    """End to end: build, select for each target skill with every method, print precision.

    On the toy assets by default; with --model, on a real pretrained model and real data.
    """
    if model is not None:
        from gradstore.demo.real import format_real_table, run_real_demo

        real = run_real_demo(work_dir, model, per_source=per_source, fraction=fraction, seed=seed)
        typer.echo(format_real_table(real))
        if json_out:
            json_out.write_text(json.dumps(real, indent=2))
        return
    from gradstore.demo.toy import format_table, run_demo

    report = run_demo(work_dir, per_family=per_family, seed=seed, fraction=fraction)
    typer.echo(format_table(report))
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


@app.command()
@needs_extra("cpu or gpu")
def report(
    store: StoreDir,
    targets: Targets,
    out: Annotated[Path, typer.Option(help="HTML file to write.")],
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--methods",
            callback=check_methods,
            help=f"Methods to compare, the first is the subject: {METHODS_TEXT}.",
        ),
    ] = None,
    top_k: TopK = None,
    fraction: Fraction = None,
    device: Annotated[str | None, typer.Option(help="Device for target gradients.")] = None,
) -> None:
    """Select with each method and write an HTML report of the first.

    The report shows the score distribution, the budget per subtask, the coverage per
    target, the top examples' text, and the overlap with the other methods.
    """
    examples = read_targets(targets)
    from gradstore.query import QueryEngine
    from gradstore.report.html import write_report
    from gradstore.selection import run_selection
    from gradstore.store.datastore import Datastore

    names = methods or ["less"]
    engine = QueryEngine(Datastore.open(store), device=device)
    results = [
        run_selection(engine, examples, m, top_k=top_k, fraction=fraction, explain=True)
        for m in names
    ]
    context = {"datastore": str(store), "targets": len(examples)}
    path = write_report(out, results, store_dir=store, labels=names, context=context)
    typer.echo(f"wrote the report of {names[0]} to {path}")


@app.command("add-methods")
@needs_extra("cpu or gpu")
def add_methods(
    store: Annotated[
        Path, typer.Argument(callback=check_store_dir, help="A ready datastore directory.")
    ],
    methods: Annotated[
        list[str],
        typer.Option(
            "--methods",
            callback=check_methods,
            help=f"Methods to add (repeat, or list after it): {METHODS_TEXT}.",
        ),
    ],
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: auto).")] = (
        None
    ),
) -> None:
    """Make a ready datastore serve more methods: compute only the artifacts they need.

    Nothing the store holds is recomputed; queries of its other methods keep working.
    """
    from gradstore.artifacts import add_artifacts
    from gradstore.selection import extra_artifacts
    from gradstore.threads import threads_per_process, use_threads

    names = extra_artifacts(methods)
    if names:
        use_threads(threads_per_process(1))
        add_artifacts(store, names, device=device, progress=True)
    typer.echo(f"{store} serves {', '.join(methods)} (artifacts: {', '.join(names) or 'none new'})")


# Flags that take several values after one flag, as users of the LESS scripts type them
# (``--warmup-from a b c d``); typer takes one value per flag, so they are spread out.
MULTI_VALUE_FLAGS = ("--warmup-from", "--methods")


def spread_multi_value_flags(argv: list[str]) -> list[str]:
    """``--flag a b c`` → ``--flag a --flag b --flag c``; the repeated form is kept."""
    out: list[str] = []
    flag: str | None = None
    for arg in argv:
        if arg.startswith("-"):
            flag = arg if arg in MULTI_VALUE_FLAGS else None
            out.append(arg)
        elif flag is not None and out[-1] != flag:
            out.extend([flag, arg])
        else:
            out.append(arg)
    return out


def main() -> None:
    """The ``gradstore`` command: an expected error is a line or two on stderr and exit 1
    (a usage error exit 2); ``--debug`` or ``GRADSTORE_DEBUG=1`` shows the traceback."""
    # transformers' bars ("Loading weights", "Writing model shards") would interleave with
    # ours; the variable is read when huggingface_hub is imported, here and in the workers
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("GRADSTORE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        command = whole_summaries(typer.main.get_command(app))
        args = spread_multi_value_flags(argv)
        code = command.main(args=args, prog_name="gradstore", standalone_mode=False)
    except Exception as error:
        if debug:
            raise
        message, code = describe_error(error)
        typer.echo(message, err=True)
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else 0)


def whole_summaries(command: Any) -> Any:
    """Give every command its whole first paragraph as its summary in command lists (click
    cuts the docstring's first sentence to fit the terminal with "...")."""
    for sub in getattr(command, "commands", {}).values():
        if sub.short_help is None and sub.help:
            sub.short_help = " ".join(sub.help.strip().split("\n\n")[0].split())
        whole_summaries(sub)
    return command


def describe_error(error: BaseException) -> tuple[str, int]:
    """What a user reads for ``error`` (without a traceback) and the exit status."""
    from typer._click import exceptions as click  # typer vendors its click: its classes

    from gradstore.errors import GradstoreError

    if isinstance(error, click.NoArgsIsHelpError):
        return error.format_message(), 2
    if isinstance(error, click.UsageError):
        where = error.ctx.command_path if error.ctx is not None else "gradstore"
        return f"error: {error.format_message()}\n(see: {where} --help)", error.exit_code
    if isinstance(error, typer.Abort):
        return "aborted", 1
    if isinstance(error, GradstoreError):
        return f"error: {error}", 1
    if isinstance(error, OSError) and error.filename is not None:
        return f"error: {error.filename}: {error.strerror}", 1
    return (
        f"error: {type(error).__name__}: {error}\n"
        "(unexpected: run again with --debug for the traceback, and report it)",
        1,
    )


def _register_plugins(target: typer.Typer) -> None:
    for entry in sorted(entry_points(group="gradstore.cli"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ModuleNotFoundError as exc:  # e.g. a source folder shadowing the install
            typer.echo(f"warning: the {entry.name} commands are unavailable: {exc}", err=True)
            continue
        register(target)


_register_plugins(app)

if __name__ == "__main__":
    main()
