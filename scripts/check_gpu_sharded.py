"""GPU check for sharded models: a model split over cuda:0 and the CPU intervenes like the unsharded one.

Run on a machine with a GPU: ``python scripts/check_gpu_sharded.py``. Prints the
largest difference for patching, collecting and generating, and exits non-zero
if any differs by more than 1e-4 (float32).
"""
import sys
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import intervenable as pv


def main() -> int:
    if not torch.cuda.is_available():
        print("no GPU: nothing to check")
        return 0
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=100, attn_pdrop=0, resid_pdrop=0, embd_pdrop=0)
    plain = GPT2LMHeadModel(config).eval().to("cuda:0")
    with tempfile.TemporaryDirectory() as folder:
        plain.save_pretrained(folder)
        device_map = {"transformer.wte": 0, "transformer.wpe": 0, "transformer.drop": 0, "transformer.h.0": 0,
                      "transformer.h.1": "cpu", "transformer.h.2": 0, "transformer.h.3": "cpu",
                      "transformer.ln_f": 0, "lm_head": 0}
        sharded = GPT2LMHeadModel.from_pretrained(folder, device_map=device_map).eval()
    base = {"input_ids": torch.randint(0, 100, (2, 8), device="cuda:0")}
    source = {"input_ids": torch.randint(0, 100, (2, 8), device="cuda:0")}
    worst = 0.0
    for layer in range(4):
        outs = []
        for model in (plain, sharded):
            pv_model = pv.IntervenableModel({"layer": layer, "component": "block_output"}, model)
            _, out = pv_model(base, [source], unit_locations={"sources->base": 3})
            outs.append(out.logits.float().cpu())
        worst = max(worst, (outs[0] - outs[1]).abs().max().item())
    vector = torch.randn(64)
    gens = []
    for model in (plain, sharded):
        pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": pv.AdditionIntervention,
                                         "source_representation": vector}, model)
        gens.append(pv_model.generate(base, max_new_tokens=8, do_sample=False, pad_token_id=0)[1].cpu())
    same_tokens = torch.equal(gens[0], gens[1])
    print(f"max logit difference (patching, 4 layers): {worst:.2e}; generation identical: {same_tokens}")
    return 0 if worst < 1e-4 and same_tokens else 1


if __name__ == "__main__":
    sys.exit(main())
