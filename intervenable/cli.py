"""The ``intervenable`` command line: causal traces, patching sweeps and component listings."""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

EXAMPLES = """examples:
  intervenable trace                                   # the embedded demo model and one of its facts
  intervenable trace --model ./my-gpt2 --prompt "The Eiffel Tower is in" --target " Paris" \\
      --subject "The Eiffel Tower" --out out/trace.png
  intervenable trace --model gpt2 --prompt "..." --target " Paris" --subject "..." \\
      --components block_output mlp_output attention_output --window 3 --samples 10
  intervenable patch --model ./my-gpt2 --clean "The Eiffel Tower is in" --corrupted "The Colosseum is in" \\
      --target " Paris" --out out/patch.png
  intervenable patch --model ./my-gpt2 --clean "..." --corrupted "..." --target " Paris" --method atp --verify 10
  intervenable trace --data facts.jsonl --out out/average.png --save out/facts.json   # {"prompt", "subject", "target"} per line
  intervenable patch --data pairs.jsonl --save-to out/pairs --out out/average.png      # {"base", "source", "target"} per line
  intervenable components --model ./my-gpt2
"""


class CliError(Exception):
    """A problem with the command line's inputs (exit code 2)."""


def _demo_dir() -> Path:
    return Path(__file__).resolve().parent / "demo" / "model"


def _field(fact: Any, *names: str) -> Any:
    for name in names:
        value = fact.get(name) if isinstance(fact, dict) else getattr(fact, name, None)
        if value is not None:
            return value
    return None


def demo_fact() -> Tuple[str, str, Optional[str]]:
    """(prompt, target, subject) of the embedded model's first fact."""
    from . import demo

    fact = list(demo.demo_facts())[0]
    return (_field(fact, "prompt"), _field(fact, "target", "answer"), _field(fact, "subject"))


DTYPES = ("float32", "float16", "bfloat16")


def _torch_dtype(dtype: str, load: bool = True) -> Any:
    """The torch dtype named by ``--dtype`` (``load=False``: only check the name, without importing torch)."""
    if dtype not in DTYPES:
        raise CliError(f"Unknown --dtype {dtype!r}: use float32, float16 or bfloat16.")
    if not load:
        return None
    import torch

    return getattr(torch, dtype)


@functools.lru_cache(maxsize=None)
def model_source(name: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """(path or hub id, from_pretrained keyword arguments) for ``--model``, without loading anything.

    A local folder loads with ``local_files_only``; a hub id must be in the local cache or the hub must
    be reachable (checked once, quickly): offline, a name that is neither fails at once.
    """
    if name is None:
        if not (_demo_dir() / "config.json").exists():
            raise CliError(f"The embedded demo model is not installed ({_demo_dir()} has no config.json): "
                           "pass --model DIR_OR_HUB_ID.")
        return str(_demo_dir()), {"local_files_only": True}
    path = os.path.expanduser(name)
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if not os.path.isdir(path) and looks_local:
        raise CliError(f"Model directory {name!r} does not exist: pass a directory with config.json, or a hub id.")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        raise CliError(f"Model directory {name!r} has no config.json: pass a folder written by "
                       "model.save_pretrained(dir) and tokenizer.save_pretrained(dir).")
    from .models.hf import resolve_source

    return path, resolve_source(path)


def load_tokenizer(name: Optional[str]) -> Tuple[Any, Any]:
    """(tokenizer, model config) of ``--model``: cheap, so that text arguments are checked before the weights load."""
    path, kwargs = model_source(name)
    from transformers import AutoConfig, AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, **kwargs), AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise CliError(f"Cannot load the tokenizer and config of {name!r} ({type(exc).__name__}: {exc}). Pass a "
                       "directory with config.json and tokenizer files, or a reachable hub id.") from None


def load_weights(name: Optional[str], device: str = "cpu", dtype: str = "float32", quiet: bool = False) -> Any:
    """The model of ``--model`` (None: the embedded demo model), on ``device`` in ``dtype``, in eval mode."""
    torch_dtype = _torch_dtype(dtype)
    path, kwargs = model_source(name)
    _check_device(device)
    from transformers import AutoModelForCausalLM

    from .models.hf import dtype_kwargs

    if name is None:
        kwargs = dict(kwargs, attn_implementation="eager")
    if quiet or name is None:  # the embedded 4 MB model needs no "Loading weights" bar (transformers 5)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **dtype_kwargs(torch_dtype), **kwargs)
    except (OSError, ValueError) as exc:
        raise CliError(f"Cannot load model {name!r} ({type(exc).__name__}: {exc}). Pass a directory with "
                       "config.json and weights, or a reachable hub id.") from None
    try:
        return model.to(device=device, dtype=torch_dtype).eval()
    except (RuntimeError, AssertionError) as exc:
        raise CliError(f"Cannot use --device {device!r}: {exc}") from None


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as exc:
        raise CliError(f"Unknown --device {device!r} ({exc}): use e.g. cpu, cuda or cuda:1.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device!r}, but no CUDA device is available here: use --device cpu.")


def load_model(name: Optional[str], device: str = "cpu", dtype: str = "float32") -> Tuple[Any, Any]:
    """(model, tokenizer) from a local directory or hub id; None means the embedded demo model."""
    _torch_dtype(dtype, load=False)
    tok, _ = load_tokenizer(name)
    return load_weights(name, device, dtype), tok


# -- argument checks, all before the model's weights are loaded ----------------------
IMAGE_EXTS = (".png", ".pdf", ".svg")
DATA_EXTS = (".pt", ".json", ".safetensors")


def check_output_path(path: Optional[str], flag: str, exts: Sequence[str], what: str) -> Optional[str]:
    """``path`` with ``~`` expanded, after checking its extension and that it can be written."""
    if path is None:
        return None
    if not path.strip():
        raise CliError(f"{flag} is empty: give a file path, e.g. {flag} out/trace{exts[0]}.")
    p = Path(path).expanduser()
    if p.suffix.lower() not in exts:
        raise CliError(f"{flag} {path!r}: {what} is written as {', '.join(exts)}; give a path ending in one of "
                       f"them, e.g. {flag} out/trace{exts[0]}.")
    if p.is_dir():
        raise CliError(f"{flag} {path!r} is a directory: give a file path inside it.")
    existing = p.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a directory"
    else:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            problem = f"no file can be created in {existing} ({exc.strerror})"
    if problem is None and p.exists() and not os.access(p, os.W_OK):
        problem = f"{p} exists and is read-only"
    if problem:
        raise CliError(f"{flag} {path!r} cannot be written: {problem}. Choose another path.")
    return str(p)


def _positive(value: Optional[float], flag: str, meaning: str) -> None:
    if value is not None and value < 1:
        raise CliError(f"{flag} must be >= 1 ({meaning}); got {value}.")


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked from the command line alone: numbers, output paths, empty texts."""
    _torch_dtype(args.dtype, load=False)
    _positive(args.batch_size, "--batch-size", "rows per forward")
    _positive(getattr(args, "window", None), "--window", "layers restored together; ROME uses 10 of 48 layers")
    _positive(getattr(args, "samples", None), "--samples", "noise draws to average; ROME uses 10")
    if getattr(args, "noise", None) is not None and not args.noise > 0:
        raise CliError(f"--noise must be > 0 (the std of the Gaussian noise); got {args.noise}.")
    if args.layers is not None and any(layer < 0 for layer in args.layers):
        raise CliError(f"--layers must be layer indices >= 0; got {args.layers}.")
    args.out = check_output_path(args.out, "--out", IMAGE_EXTS, "the heatmap")
    args.save = check_output_path(args.save, "--save", DATA_EXTS, "the data")


def check_texts(args: argparse.Namespace, tok: Any, config: Any, prompt: str, corrupted: Optional[str],
                subject: Optional[str]) -> None:
    """Prompt, corrupted prompt, subject, target and layers against the tokenizer and config."""
    from .sweeps.spec import as_ids, check_layers, subject_range, target_id

    ids = as_ids(prompt, tok, "clean prompt")
    if corrupted is not None:
        other = as_ids(corrupted, tok, "corrupted prompt")
        if other.shape[1] != ids.shape[1]:
            raise CliError(f"The prompts have {ids.shape[1]} and {other.shape[1]} tokens: positions are patched "
                           "one-to-one, so give prompts of the same length in tokens.")
    if subject is not None:
        subject_range(ids, subject, tok)
    if args.target is not None:
        target_id(args.target, tok)
    n_layers = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers")
                     if isinstance(getattr(config, k, None), int)), None)
    check_layers(args.layers, n_layers)
    check_components(config, args.components)


def check_components(config: Any, components: Sequence[str]) -> None:
    """Place each component on a weightless copy of the model (meta device): unknown names fail here."""
    import torch
    from transformers import AutoModelForCausalLM

    from .sites.resolve import resolve_component

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - a model that cannot be built weightless is checked after loading
        return
    for component in components:
        resolve_component(skeleton, component, None if ("." in component or "[" in component) else 0)


def _check_prompt(text: Optional[str], flag: str) -> str:
    if text is None or not text.strip():
        raise CliError(f"The {flag} is empty: give a non-empty text, e.g. {flag} \"The Eiffel Tower is in\".")
    return text


def _finish(result: Any, args: argparse.Namespace) -> None:
    print(result.summary())
    info = result.info
    runs = f"{info['forwards']} forwards" + (f" and {info['backwards']} backwards" if "backwards" in info else "")
    print(f"  {info['path']} path, {runs} of up to {info['batch_size']} rows, {info['seconds']:.2f} s")
    if args.out:
        print(f"heatmap written to {result.save(args.out)}")
    if args.save:
        print(f"data written to {result.save(args.save)}")


def _check_data_flags(args: argparse.Namespace) -> None:
    if args.data is None:
        for flag, value in (("--align", args.align), ("--save-to", args.save_to), ("--normalise", args.normalise or None)):
            if value is not None:
                raise CliError(f"{flag} applies to a dataset: give --data FILE.jsonl.")
        if args.on_error != "raise":
            raise CliError("--on-error applies to a dataset: give --data FILE.jsonl.")
    elif not os.path.isfile(os.path.expanduser(args.data)):
        raise CliError(f"--data {args.data!r} is not a file: give a JSONL file, one JSON object per line.")


def cmd_data(args: argparse.Namespace, kind: str) -> None:
    """A sweep over the rows of ``--data``: rows checked against the tokenizer before the weights load."""
    from . import cli_data

    rows = cli_data.load_rows(args)
    tok, config = load_tokenizer(args.model)
    cli_data.check_rows(rows, tok, kind, args.target, args.on_error, args.data)
    n_layers = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers")
                     if isinstance(getattr(config, k, None), int)), None)
    from .sweeps.spec import check_layers

    check_layers(args.layers, n_layers)
    check_components(config, args.components)
    model = load_weights(args.model, args.device, args.dtype, args.quiet)
    cli_data.run(kind, model, tok, rows, args)


def cmd_trace(args: argparse.Namespace) -> None:
    check_args(args)
    _check_data_flags(args)
    if args.data is not None:
        return cmd_data(args, "trace")
    prompt, target, subject = args.prompt, args.target, args.subject
    if args.model is None and prompt is None:
        prompt, demo_target, demo_subject = demo_fact()
        args.target = target = demo_target if target is None else target
        subject = demo_subject if subject is None and args.corrupted is None else subject
        print(f"demo fact: {prompt!r} -> {target!r} (subject {subject!r})")
    prompt = _check_prompt(prompt, "--prompt")
    if args.corrupted is None and subject is None:
        raise CliError("Give --subject (the words to corrupt with noise) or --corrupted (a counterfactual prompt).")
    tok, config = load_tokenizer(args.model)
    check_texts(args, tok, config, prompt, args.corrupted, subject)
    model = load_weights(args.model, args.device, args.dtype, args.quiet)
    from .sweeps import causal_trace

    result = causal_trace(model, prompt, args.corrupted, target, subject=subject, tokenizer=tok, noise=args.noise,
                          samples=args.samples, components=args.components, window=args.window, sever=args.sever,
                          layers=args.layers, batch_size=args.batch_size, progress=False if args.quiet else None)
    _finish(result, args)


def cmd_patch(args: argparse.Namespace) -> None:
    check_args(args)
    if args.method == "exact" and (args.verify is not None or args.steps is not None):
        raise CliError("--verify and --steps apply to --method atp, ig or eap-ig (exact patching is already exact).")
    _positive(args.steps, "--steps", "points on the integrated-gradients path")
    _positive(args.verify, "--verify", "cells rerun by exact patching")
    _check_data_flags(args)
    if args.data is not None:
        return cmd_data(args, "patch")
    clean = _check_prompt(args.clean, "--clean")
    corrupted = _check_prompt(args.corrupted, "--corrupted")
    tok, config = load_tokenizer(args.model)
    check_texts(args, tok, config, clean, corrupted, None)
    model = load_weights(args.model, args.device, args.dtype, args.quiet)
    from .sweeps import attribution_patching, patching_sweep

    if args.method == "exact":
        result = patching_sweep(model, corrupted, clean, args.target, tokenizer=tok, components=args.components,
                                layers=args.layers, batch_size=args.batch_size,
                                progress=False if args.quiet else None)
    else:
        result = attribution_patching(model, corrupted, clean, args.target, tokenizer=tok, components=args.components,
                                      layers=args.layers, method=args.method, steps=args.steps, verify=args.verify,
                                      batch_size=args.batch_size)
    _finish(result, args)


def cmd_components(args: argparse.Namespace) -> None:
    _torch_dtype(args.dtype, load=False)
    if args.layer < 0:
        raise CliError(f"--layer must be >= 0; got {args.layer}.")
    model = load_weights(args.model, args.device, args.dtype)
    from .sites.resolve import list_components

    print(list_components(model, layer=args.layer))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intervenable", description="Causal interventions on PyTorch models.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="local model directory or hub id (default: the embedded demo model)")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
        p.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")

    def sweep(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", default=None, help="the answer token (one token; default: the model's top prediction)")
        p.add_argument("--components", nargs="+", default=["block_output"],
                       help="abstract components or module paths (default block_output)")
        p.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: from a memory budget)")
        p.add_argument("--layers", type=int, nargs="+", default=None, help="layers to sweep (default: all)")
        p.add_argument("--out", default=None, help="write the heatmap to this .png, .pdf or .svg path")
        p.add_argument("--save", default=None, help="write the data to a .pt, .json or .safetensors file")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--data", default=None, metavar="FILE.jsonl",
                       help="a dataset, one JSON object per line: sweep every example, write the average heatmap "
                            "to --out and every example's result to --save")
        p.add_argument("--align", choices=["subject", "end", "marks"], default=None,
                       help="with --data: rows of the average (default: subject for noised traces, marks when "
                            "every row has them, else the last tokens)")
        p.add_argument("--normalise", action="store_true",
                       help="with --data: average (patched - corrupted) / (clean - corrupted)")
        p.add_argument("--save-to", default=None, metavar="DIR",
                       help="with --data: write each example as it completes; rerunning resumes")
        p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                       help="with --data: stop at an example that cannot run (default) or report it and go on")

    t = sub.add_parser("trace", help="ROME causal trace of one prompt, or of a dataset (--data)", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(t)
    sweep(t)
    t.add_argument("--prompt", default=None, help="the clean prompt (default: a fact of the demo model)")
    t.add_argument("--subject", default=None, help="words of the prompt to corrupt with Gaussian noise")
    t.add_argument("--corrupted", default=None, help="a counterfactual prompt of the same length instead of noise")
    t.add_argument("--noise", type=float, default=None, help="noise std (default 3 x std of the embeddings)")
    t.add_argument("--samples", type=int, default=1, help="noise draws to average (default 1; ROME averages 10)")
    t.add_argument("--window", type=int, default=1, help="layers restored together for mlp/attention (ROME: 10 of GPT-2 XL's 48 layers; about a fifth of "
                        "the layers, e.g. 3 for 12)")
    t.add_argument("--sever", choices=["mlp", "attention"], default=None, help="freeze later MLP / attention")
    t.set_defaults(func=cmd_trace)

    p = sub.add_parser("patch", help="activation patching: clean -> corrupted, one site at a time", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    sweep(p)
    p.add_argument("--clean", default=None, help="the prompt whose activations are copied in")
    p.add_argument("--corrupted", default=None, help="the prompt that is run and patched (same length)")
    p.add_argument("--method", choices=["exact", "atp", "ig", "eap-ig"], default="exact",
                   help="exact patching (default), or estimates from gradients: atp (one backward), ig "
                        "(integrated gradients on each layer's sites) or eap-ig (on the token embeddings)")
    p.add_argument("--steps", type=int, default=None,
                   help="points on the path for --method ig or eap-ig (default 8)")
    p.add_argument("--verify", type=int, default=None, metavar="K",
                   help="with atp/ig/eap-ig: rerun the K largest estimates by exact patching and print both")
    p.set_defaults(func=cmd_patch)

    c = sub.add_parser("components", help="list the components of a model and the modules they hook")
    common(c)
    c.add_argument("--layer", type=int, default=0, help="layer to place the components at (default 0)")
    c.set_defaults(func=cmd_components)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (2 for input errors)."""
    from .errors import IntervenableError

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        args.func(args)
    except (CliError, IntervenableError) as exc:
        print(f"intervenable {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
