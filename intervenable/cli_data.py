"""``intervenable trace --data`` / ``patch --data``: a sweep over a JSONL dataset from the shell.

Each line of the file is one JSON object, a row as ``intervenable.sweeps.examples`` reads it
(``prompt``, ``subject``, ``target``, ``corrupted`` for traces; ``base`` and ``source``, or
``clean`` and ``corrupted``, for patching; ``foil``, ``marks``, ``seed``). Every row is checked
against the tokenizer before the model's weights load; the average heatmap goes to ``--out``,
every example's result to ``--save``, and ``--save-to`` keeps results as they complete.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from .errors import InputError, IntervenableError
from .sweeps.examples import Examples, examples, read_jsonl
from .sweeps.spec import as_ids, subject_range, target_id

ALIGNS = ("subject", "end", "marks")


def load_rows(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The rows of ``--data`` (one JSON object per line); their layout checked by ``examples``."""
    for flag in ("prompt", "subject", "clean", "corrupted"):
        if getattr(args, flag, None) is not None:
            raise InputError(f"--data gives the prompts: drop --{flag} (put it in each row of the file instead).")
    rows = read_jsonl(args.data)
    examples(rows, target=args.target)  # layout: a prompt per row, no field given twice
    return rows


def check_rows(rows: List[Dict[str, Any]], tok: Any, kind: str, target: Optional[str], on_error: str,
               path: str) -> Dict[int, str]:
    """Each example's prompts, subject, target and foil against the tokenizer; problems by example index
    (``on_error="raise"``: the first one is an error naming its line)."""
    exs: Examples = examples(rows, target=target)
    problems: Dict[int, str] = {}
    for i, ex in enumerate(exs):
        try:
            clean = as_ids(ex.clean, tok, "clean prompt")
            if ex.corrupted is not None:
                other = as_ids(ex.corrupted, tok, "corrupted prompt")
                if other.shape[1] != clean.shape[1]:
                    raise InputError(f"its prompts have {clean.shape[1]} and {other.shape[1]} tokens: positions are "
                                     "patched one-to-one, so give prompts of the same length in tokens.")
            elif kind == "patch":
                raise InputError("it has no 'base' (or 'corrupted') prompt to run and patch.")
            elif ex.subject is None:
                raise InputError("it has neither 'subject' (to noise) nor 'corrupted' (a counterfactual prompt).")
            if ex.subject is not None:
                subject_range(clean, ex.subject, tok)
            for value in (ex.target, ex.foil):
                if value is not None:
                    target_id(value, tok)
        except IntervenableError as exc:
            if on_error == "raise":
                raise InputError(f"{path}: example {i} (row {i + 1}): {exc}") from None
            problems[i] = str(exc)
    return problems


def default_align(result: Any, kind: str) -> Optional[str]:
    """ROME's subject rows for noised traces, the marks when every example has them, else the last tokens."""
    done = [result.per_example[i] for i in result.finished]
    if kind == "trace" and done and all(r.subject is not None for r in done):
        return "subject"
    if done and all(result.marks[i] for i in result.finished):
        return "marks"
    return "end"


def run(kind: str, model: Any, tok: Any, rows: List[Dict[str, Any]], args: argparse.Namespace) -> Any:
    """Run the sweep over ``rows``; print the average's summary; write ``--out`` and ``--save``."""
    from .sweeps import attribution_patching, causal_trace, patching_sweep

    common = dict(tokenizer=tok, components=args.components, layers=args.layers, batch_size=args.batch_size,
                  on_error=args.on_error, save_to=args.save_to)
    if kind == "trace":
        result = causal_trace(model, rows, target=args.target, noise=args.noise, samples=args.samples,
                              window=args.window, sever=args.sever, progress=False if args.quiet else None, **common)
    elif args.method == "exact":
        result = patching_sweep(model, rows, target=args.target, progress=False if args.quiet else None, **common)
    else:
        result = attribution_patching(model, rows, target=args.target, method=args.method, steps=args.steps,
                                      verify=args.verify, progress=False if args.quiet else None, **common)
    align = args.align or default_align(result, kind)
    print(result.summary(align=align, normalise=args.normalise))
    for i, message in result.errors.items():
        print(f"  skipped example {i}: {message}")
    if args.out:
        print(f"average heatmap ({align} aligned) written to "
              f"{result.average(align, normalise=args.normalise).save(args.out)}")
    if args.save:
        print(f"per-example results written to {result.save(args.save)}")
    return result
