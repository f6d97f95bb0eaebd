"""A first look: patch one activation of a small random GPT-2 and show the effect.

Run with ``python -m intervenable.quickstart``. It wraps a randomly
initialised 4-layer GPT-2, copies the block output of layer 2 at the last
position from a source sentence into a base sentence, and prints how the
next-token distribution moved. It then checks the result against the same
patch done with a plain PyTorch forward hook.
"""
from __future__ import annotations

import torch

import intervenable as pv


def main() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    base = {"input_ids": torch.tensor([[5, 17, 42, 8, 23]])}
    source = {"input_ids": torch.tensor([[5, 17, 61, 8, 90]])}

    pv_model = pv.IntervenableModel(
        {"layer": 2, "component": "block_output", "intervention": pv.VanillaIntervention}, model
    )
    original, patched = pv_model(base, [source], unit_locations={"sources->base": 4}, output_original_output=True)

    p_before = original.logits[0, -1].softmax(-1)
    p_after = patched.logits[0, -1].softmax(-1)
    with torch.no_grad():
        p_source = model(**source).logits[0, -1].softmax(-1)
    print("Patched layer 2 block output at position 4 from the source into the base.\n")
    print(f"{'token':>6} {'base p':>9} {'patched p':>10} {'source p':>9}")
    for token in torch.topk(p_after, 5).indices.tolist():
        print(f"{token:>6} {p_before[token]:>9.4f} {p_after[token]:>10.4f} {p_source[token]:>9.4f}")
    tv_before = 0.5 * (p_before - p_source).abs().sum().item()
    tv_after = 0.5 * (p_after - p_source).abs().sum().item()
    print(f"\nTotal variation distance to the source's distribution: {tv_before:.4f} -> {tv_after:.4f}")

    # The same patch by hand, with a plain forward hook: the results must agree.
    with torch.no_grad():
        clean = model(**source, output_hidden_states=True).hidden_states[3][:, 4]

        def hook(module, args, output):
            output = output.clone()
            output[:, 4] = clean
            return output

        handle = model.transformer.h[2].register_forward_hook(hook)
        try:
            by_hand = model(**base).logits
        finally:
            handle.remove()
    print(f"Max difference from a hand-written hook: {(by_hand - patched.logits).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
