"""The ``intervenable`` command line: causal traces, patching sweeps and component listings."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

EXAMPLES = """examples:
  intervenable trace                                   # the embedded demo model and one of its facts
  intervenable trace --model ./my-gpt2 --prompt "The Eiffel Tower is in" --target " Paris" \\
      --subject "The Eiffel Tower" --out out/trace.png
  intervenable trace --model gpt2 --prompt "..." --target " Paris" --subject "..." \\
      --components block_output mlp_output attention_output --window 10
  intervenable patch --model ./my-gpt2 --clean "The Eiffel Tower is in" --corrupted "The Colosseum is in" \\
      --target " Paris" --out out/patch.png
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


def load_model(name: Optional[str], device: str = "cpu", dtype: str = "float32") -> Tuple[Any, Any]:
    """(model, tokenizer) from a local directory or hub id; None means the embedded demo model."""
    import torch

    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise CliError(f"Unknown --dtype {dtype!r}: use float32, float16 or bfloat16.")
    if name is None:
        if not (_demo_dir() / "config.json").exists():
            raise CliError(f"The embedded demo model is not installed ({_demo_dir()} has no config.json): "
                           "pass --model DIR_OR_HUB_ID.")
        from . import demo

        loaded = demo.load_demo_model()
        model, tok = (loaded[0], loaded[1]) if isinstance(loaded, tuple) else (loaded, None)
        if tok is None:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(_demo_dir()))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
        if not os.path.isdir(name) and looks_local:
            raise CliError(f"Model directory {name!r} does not exist: pass a directory with config.json, or a hub id.")
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise CliError(f"Cannot load model {name!r}: it is not a local model directory and could not be "
                           f"fetched from the hub ({type(exc).__name__}). Pass a directory with config.json "
                           "and tokenizer files, or a reachable hub id.") from None
    try:
        model = model.to(device=device, dtype=torch_dtype).eval()
    except (RuntimeError, AssertionError) as exc:
        raise CliError(f"Cannot use --device {device!r}: {exc}") from None
    return model, tok


def _check_prompt(text: Optional[str], flag: str) -> str:
    if text is None or not text.strip():
        raise CliError(f"The {flag} is empty: give a non-empty text, e.g. {flag} \"The Eiffel Tower is in\".")
    return text


def _finish(result: Any, args: argparse.Namespace) -> None:
    print(result.summary())
    info = result.info
    print(f"  {info['path']} path, {info['forwards']} forwards of up to {info['batch_size']} rows, "
          f"{info['seconds']:.2f} s")
    if args.out:
        print(f"heatmap written to {result.save(args.out)}")
    if args.save:
        print(f"data written to {result.save(args.save)}")


def cmd_trace(args: argparse.Namespace) -> None:
    from .sweeps import causal_trace

    model, tok = load_model(args.model, args.device, args.dtype)
    prompt, target, subject = args.prompt, args.target, args.subject
    if args.model is None and prompt is None:
        prompt, target, subject = demo_fact()
        print(f"demo fact: {prompt!r} -> {target!r} (subject {subject!r})")
    prompt = _check_prompt(prompt, "--prompt")
    if args.corrupted is None and subject is None:
        raise CliError("Give --subject (the words to corrupt with noise) or --corrupted (a counterfactual prompt).")
    result = causal_trace(model, prompt, args.corrupted, target, subject=subject, tokenizer=tok, noise=args.noise,
                          samples=args.samples, components=args.components, window=args.window, sever=args.sever,
                          batch_size=args.batch_size, progress=False if args.quiet else None)
    _finish(result, args)


def cmd_patch(args: argparse.Namespace) -> None:
    from .sweeps import patching_sweep

    model, tok = load_model(args.model, args.device, args.dtype)
    clean = _check_prompt(args.clean, "--clean")
    corrupted = _check_prompt(args.corrupted, "--corrupted")
    result = patching_sweep(model, corrupted, clean, args.target, tokenizer=tok, components=args.components,
                            batch_size=args.batch_size, progress=False if args.quiet else None)
    _finish(result, args)


def cmd_components(args: argparse.Namespace) -> None:
    from .sites.resolve import list_components

    model, _ = load_model(args.model, args.device, args.dtype)
    list_components(model, layer=args.layer)


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
        p.add_argument("--out", default=None, help="write the heatmap to this PNG path")
        p.add_argument("--save", default=None, help="write the data to a .pt, .json or .safetensors file")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("trace", help="ROME causal trace of one prompt", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(t)
    sweep(t)
    t.add_argument("--prompt", default=None, help="the clean prompt (default: a fact of the demo model)")
    t.add_argument("--subject", default=None, help="words of the prompt to corrupt with Gaussian noise")
    t.add_argument("--corrupted", default=None, help="a counterfactual prompt of the same length instead of noise")
    t.add_argument("--noise", type=float, default=None, help="noise std (default 3 x std of the embeddings)")
    t.add_argument("--samples", type=int, default=1, help="noise draws to average (ROME: 10)")
    t.add_argument("--window", type=int, default=1, help="layers restored together for mlp/attention (ROME: 10)")
    t.add_argument("--sever", choices=["mlp", "attention"], default=None, help="freeze later MLP / attention")
    t.set_defaults(func=cmd_trace)

    p = sub.add_parser("patch", help="activation patching: clean -> corrupted, one site at a time", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    sweep(p)
    p.add_argument("--clean", required=True, help="the prompt whose activations are copied in")
    p.add_argument("--corrupted", required=True, help="the prompt that is run and patched (same length)")
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
