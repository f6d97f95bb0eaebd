"""Ablating each of 4,096 SAE latents at the last position, one at a time: the batched feature sweep vs loops.

A randomly initialised GPT-2-small-shaped model (12 layers, 768 wide, 12 heads, vocabulary 50257, CPU), a
random standard SAE of 4,096 latents at ``blocks.6.hook_resid_post`` (encoder bias raised so that every
latent is active at the last position: every ablation is a real run), a 16-token prompt. Rows:

* ``pv.feature_patching(..., positions=[-1], latents="all")``: every ablation, batched (the sweeps' fast
  path: the base run recorded once, each row recomputes layers 6-11 at the last position only);
* a Python loop of single ablations with ``pv.SAEIntervention(sae, ablate=[i])`` (one forward each);
* SAELens's documented way (``HookedSAETransformer.run_with_hooks_with_saes`` with a hook on
  ``hook_sae_acts_post`` zeroing the latent, ``use_error_term=True``), when SAELens is installed in
  ``--saelens-python`` (default ``/tmp/saelens_venv/bin/python``); else "not installed".

The loops are timed on ``--loop-sample`` latents (default 256; SAELens 128) and scaled to 4,096 (the
table says so). The sweep's values are checked against the loop's on the sampled latents. Run::

    .venv/bin/python benchmarks/bench_sae.py [--latents 4096] [--tokens 16] [--loop-sample 256]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

ROOT = Path(__file__).resolve().parent.parent
LAYER, TARGET = 6, 314

SAELENS_CHILD = r"""
import json, sys, time, torch
from transformer_lens import HookedTransformerConfig
from sae_lens import HookedSAETransformer, SAE
torch.manual_seed(0)
latents, tokens, sample, layer, target = (int(a) for a in sys.argv[1:6])
cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                              d_vocab=50257, act_fn="gelu_new", normalization_type="LN")
model = HookedSAETransformer(cfg).eval()
hook = f"blocks.{layer}.hook_resid_post"
sae = SAE.from_dict({"architecture": "standard", "d_in": 768, "d_sae": latents, "dtype": "float32", "device": "cpu",
                     "apply_b_dec_to_input": True, "normalize_activations": "none", "metadata": {"hook_name": hook}})
with torch.no_grad():
    sae.W_enc.copy_(torch.randn(768, latents) * 0.02); sae.W_dec.copy_(torch.randn(latents, 768) * 0.02)
    sae.b_enc.fill_(1.0)
sae.use_error_term = True
ids = torch.randint(0, 50257, (1, tokens), generator=torch.Generator().manual_seed(1))
def ablate(i):
    def fn(acts, hook):
        acts[:, -1, i] = 0.0
        return acts
    return fn
with torch.no_grad():
    model.run_with_hooks_with_saes(ids, saes=[sae], fwd_hooks=[(hook + ".hook_sae_acts_post", ablate(0))])
    t0 = time.perf_counter()
    for i in range(sample):
        logits = model.run_with_hooks_with_saes(ids, saes=[sae], fwd_hooks=[(hook + ".hook_sae_acts_post", ablate(i))])
        float(logits[0, -1].softmax(-1)[target])
    seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "sample": sample}))
"""


def build(latents: int, tokens: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import intervenable as pv

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)).eval()
    sae = pv.SAE(torch.randn(768, latents) * 0.02, torch.randn(latents, 768) * 0.02, b_enc=torch.ones(latents),
                 layer=LAYER, component="block_output", hook_name=f"blocks.{LAYER}.hook_resid_post")
    ids = torch.randint(0, 50257, (1, tokens), generator=torch.Generator().manual_seed(1))
    return model, sae, ids


def ours(model, sae, ids) -> Dict[str, Any]:
    import intervenable as pv

    pv.feature_patching(model, sae, ids, target=TARGET, positions=[-1], latents=list(range(8)))  # warm-up
    t0 = time.perf_counter()
    result = pv.feature_patching(model, sae, ids, target=TARGET, positions=[-1], latents="all")
    return {"seconds": time.perf_counter() - t0, "result": result}


def loop(model, sae, ids, sample: int):
    import torch

    import intervenable as pv

    iv = pv.SAEIntervention(sae)
    pv_model = pv.IntervenableModel(iv, model)
    base = {"input_ids": ids}
    values = []
    with torch.no_grad():
        pv_model(base, unit_locations={"base": ids.shape[1] - 1})
        t0 = time.perf_counter()
        for i in range(sample):
            iv.ablate = [i]
            _, out = pv_model(base, unit_locations={"base": ids.shape[1] - 1})
            values.append(float(out.logits[0, -1].float().softmax(-1)[TARGET]))
    return time.perf_counter() - t0, values


def saelens(python: str, latents: int, tokens: int, sample: int) -> Optional[Dict[str, Any]]:
    if not os.path.exists(python):
        return None
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    run = subprocess.run([python, "-c", SAELENS_CHILD, str(latents), str(tokens), str(sample), str(LAYER), str(TARGET)],
                         capture_output=True, text=True, env=env, timeout=3600)
    if run.returncode != 0:
        if "No module named" in run.stderr:
            return None
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--loop-sample", type=int, default=256)
    parser.add_argument("--saelens-sample", type=int, default=128)
    parser.add_argument("--saelens-python", default="/tmp/saelens_venv/bin/python")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, sae, ids = build(args.latents, args.tokens)
    mine = ours(model, sae, ids)
    result = mine["result"]
    runs = result.info["edited_cells"]
    loop_seconds, loop_values = loop(model, sae, ids, args.loop_sample)
    sweep_values = result.values[0, 0, 0, : args.loop_sample].tolist()
    err = max(abs(a - b) for a, b in zip(sweep_values, loop_values))
    assert err < 1e-5, f"the sweep and the loop disagree by {err}"
    loop_total = loop_seconds * args.latents / args.loop_sample
    lens = saelens(args.saelens_python, args.latents, args.tokens, args.saelens_sample)
    print(f"Ablating each of {args.latents} latents (all active, {runs} runs) at the last of {args.tokens} tokens, "
          f"GPT-2-small shape, SAE at blocks.{LAYER}.hook_resid_post, CPU, {torch.get_num_threads()} thread(s)\n")
    print("| method | seconds | per latent (ms) | ours is faster by |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| pv.feature_patching (batched, {result.info['path']} path, batch {result.info['batch_size']}) | "
          f"{mine['seconds']:.2f} | {1000 * mine['seconds'] / args.latents:.2f} | 1.0x |")
    print(f"| loop of pv.SAEIntervention(ablate=[i]) (timed on {args.loop_sample}, scaled) | {loop_total:.1f} | "
          f"{1000 * loop_seconds / args.loop_sample:.2f} | {loop_total / mine['seconds']:.1f}x |")
    if lens is None:
        print("| SAELens run_with_hooks_with_saes loop | not installed | | |")
    else:
        total = lens["seconds"] * args.latents / lens["sample"]
        print(f"| SAELens run_with_hooks_with_saes loop (timed on {lens['sample']}, scaled) | {total:.1f} | "
              f"{1000 * lens['seconds'] / lens['sample']:.2f} | {total / mine['seconds']:.1f}x |")
    print(f"\nsweep == loop on the {args.loop_sample} latents timed: max |difference| {err:.2e}")


if __name__ == "__main__":
    main()
