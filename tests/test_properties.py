"""Property-based tests: random valid configs and locations against a plain-hook reference."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import intervenable as pv
from gpt2_manual import tiny_gpt2

def _main(output):
    """A block's hidden states: transformers 5 returns the tensor, 4.x a tuple starting with it."""
    return output[0] if isinstance(output, tuple) else output


MODEL = tiny_gpt2(n_layer=2, n_embd=16, n_head=2)
SEQ, BATCH = 5, 2
WIDTHS = {"block_output": 16, "mlp_activation": 64, "attention_input": 16, "value_output": 16}
MODULES = {  # (module, hook kind, last-dim slice) written out by hand, independent of the registry
    "block_output": ("transformer.h.{l}", "output", None),
    "mlp_activation": ("transformer.h.{l}.mlp.act", "output", None),
    "attention_input": ("transformer.h.{l}.attn", "input", None),
    "value_output": ("transformer.h.{l}.attn.c_attn", "output", (32, 48)),
}
TOKENS = st.lists(st.integers(0, 63), min_size=SEQ, max_size=SEQ)


def reference(base_ids, source_ids, component, layer, src_pos, base_pos, dims, op):
    """The same intervention written with plain torch hooks."""
    path, kind, span = MODULES[component]
    module = MODEL.get_submodule(path.format(l=layer))
    lo, hi = span or (0, WIDTHS[component])
    store = {}

    def grab(t):
        return t[0] if isinstance(t, tuple) else t

    def get_hook(m, args, out):
        store["v"] = (args[0] if kind == "input" else grab(out))[..., lo:hi].detach().clone()

    def edit(t):
        t = t.clone()
        sub = t[..., lo:hi]
        for row in range(BATCH):
            for sp, bp in zip(src_pos[row], base_pos[row]):
                for d in (dims[row] if dims is not None else range(hi - lo)):
                    if op == "swap":
                        sub[row, bp, d] = store["v"][row, sp, d]
                    else:
                        sub[row, bp, d] = sub[row, bp, d] + store["v"][row, sp, d]
        t[..., lo:hi] = sub
        return t

    h = module.register_forward_hook(get_hook)
    try:
        MODEL(source_ids)
    finally:
        h.remove()
    if kind == "input":
        h = module.register_forward_pre_hook(lambda m, args: (edit(args[0]),) + tuple(args[1:]))
    else:
        h = module.register_forward_hook(lambda m, a, out: (edit(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else edit(out))
    try:
        return MODEL(base_ids).logits
    finally:
        h.remove()


@st.composite
def cases(draw):
    component = draw(st.sampled_from(sorted(MODULES)))
    layer = draw(st.integers(0, 1))
    n = draw(st.integers(1, 3))
    def row():  # unique positions, some written as negative indices
        picked = draw(st.lists(st.integers(0, SEQ - 1), min_size=n, max_size=n, unique=True))
        return [p - SEQ if draw(st.booleans()) else p for p in picked]

    rows = lambda: [row() for _ in range(BATCH)]
    src_pos, base_pos = rows(), rows()
    use_dims = draw(st.booleans())
    k = draw(st.integers(1, 4))
    dims = [draw(st.lists(st.integers(0, WIDTHS[component] - 1), min_size=k, max_size=k, unique=True)) for _ in range(BATCH)] if use_dims else None
    op = draw(st.sampled_from(["swap", "add"]))
    base = draw(st.lists(TOKENS, min_size=BATCH, max_size=BATCH))
    source = draw(st.lists(TOKENS, min_size=BATCH, max_size=BATCH))
    return component, layer, src_pos, base_pos, dims, op, torch.tensor(base), torch.tensor(source)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_patches_match_plain_hooks(case):
    component, layer, src_pos, base_pos, dims, op, base, source = case
    norm = lambda rows: [[p % SEQ for p in r] for r in rows]
    expected = reference(base, source, component, layer, norm(src_pos), norm(base_pos), dims, op)
    intervention = pv.VanillaIntervention if op == "swap" else pv.AdditionIntervention
    pv_model = pv.IntervenableModel(
        {"layer": layer, "component": component, "intervention": intervention, "max_number_of_units": len(src_pos[0])}, MODEL
    )
    _, out = pv_model({"input_ids": base}, [{"input_ids": source}],
                      unit_locations={"sources->base": ([src_pos], [base_pos])},
                      subspaces=None if dims is None else [dims])
    assert torch.allclose(out.logits, expected, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, SEQ - 1), min_size=1, max_size=4, unique=True), st.integers(0, 1))
def test_collect_equals_hidden_states(positions, layer):
    """hidden_states[l + 1] is block l's output, except the last one, which HF takes after ln_f."""
    base = torch.arange(BATCH * SEQ).reshape(BATCH, SEQ) % 64
    pv_model = pv.IntervenableModel({"layer": layer, "component": "block_output", "intervention": pv.CollectIntervention}, MODEL)
    (_, collected), _ = pv_model({"input_ids": base}, unit_locations={"base": [[positions]]})
    hidden = MODEL(base, output_hidden_states=True).hidden_states[layer + 1]
    if layer == MODEL.config.n_layer - 1:
        hidden = None
        store = []
        handle = MODEL.transformer.h[layer].register_forward_hook(lambda m, a, out: store.append(_main(out)))
        try:
            MODEL(base)
        finally:
            handle.remove()
        hidden = store[0]
    assert torch.allclose(collected[0], hidden[:, positions], atol=1e-6)
