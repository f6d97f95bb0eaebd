"""generate(): interventions on prompt and generated tokens equal plain generate with hand-written hooks."""
import pytest
import torch

import intervenable as pv
from gpt2_manual import tiny_gpt2

def _main(output):
    """A block's hidden states: transformers 5 returns the tensor, 4.x a tuple starting with it."""
    return output[0] if isinstance(output, tuple) else output


MAX_NEW = 6


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


MODELS = {
    # name: (model, component of layer 1 for the library, the module the hand-written hook uses)
    "gpt2": (tiny_gpt2(n_layer=2), {"layer": 1, "component": "block_output"}, lambda m: m.transformer.h[1]),
    "llama": (tiny_llama(), {"component": "model.layers[1].output"}, lambda m: m.model.layers[1]),
}
PROMPT = {"input_ids": torch.tensor([[5, 9, 13, 7, 21]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
P = 5


def steer_vector(model, scale=4.0):
    g = torch.Generator().manual_seed(7)
    return scale * torch.randn(model.config.hidden_size, generator=g)


def hooked_generate(model, module, edit, inputs, **kwargs):
    """Plain generate with one forward hook; ``edit(out, start)`` gets the output and its first absolute position."""
    calls = {"n": -1}

    def pre(mod, args):
        calls["n"] += 1

    def hook(mod, args, output):
        out = output[0] if isinstance(output, tuple) else output
        length = out.shape[1]
        start = P + calls["n"] - length
        new = edit(out.clone(), start)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    h1 = model.register_forward_pre_hook(pre)
    h2 = module.register_forward_hook(hook)
    try:
        return model.generate(**inputs, **kwargs)
    finally:
        h1.remove()
        h2.remove()


def add_on_generated(v):
    """A hooked_generate edit adding ``v`` at every generated position (absolute position >= P)."""

    def edit(out, start):
        for i in range(out.shape[1]):
            if start + i >= P:
                out[:, i] += v
        return out

    return edit


def kwargs_for(use_cache, **extra):
    return dict(max_new_tokens=MAX_NEW, do_sample=False, use_cache=use_cache, pad_token_id=0, **extra)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_steering_generated_tokens_only(name, use_cache):
    model, comp, module = MODELS[name]
    v = steer_vector(model)

    def edit(out, start):
        for i in range(out.shape[1]):
            if start + i >= P:  # generated tokens only
                out[:, i] += v
        return out

    expected = hooked_generate(model, module(model), edit, PROMPT, **kwargs_for(use_cache))
    pv_model = pv.IntervenableModel({**comp, "intervention": pv.AdditionIntervention, "source_representation": v}, model)
    original, got = pv_model.generate(PROMPT, output_original_output=True, **kwargs_for(use_cache))
    assert torch.equal(got, expected)
    assert not torch.equal(got, original), "the steering vector should change the generation"
    assert torch.equal(original, model.generate(**PROMPT, **kwargs_for(use_cache)))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("steps", [None, "all", 2])
def test_steering_on_prompt_positions_and_chosen_steps(name, use_cache, steps):
    model, comp, module = MODELS[name]
    v = steer_vector(model)
    chosen = {None: lambda j: False, "all": lambda j: True, 2: lambda j: j < 2}[steps]

    def edit(out, start):
        for i in range(out.shape[1]):
            p = start + i
            if p in (1, 4) or (p >= P and chosen(p - P)):
                out[:, i] += v
        return out

    expected = hooked_generate(model, module(model), edit, PROMPT, **kwargs_for(use_cache))
    pv_model = pv.IntervenableModel({**comp, "intervention": pv.AdditionIntervention, "source_representation": v,
                                     "max_number_of_units": 2}, model)
    _, got = pv_model.generate(PROMPT, unit_locations={"base": [[[1, -1]]]}, intervene_on_prompt=True,
                               generation_steps=steps, **kwargs_for(use_cache))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_patched_prompt_position_from_a_source(name, use_cache):
    model, comp, module = MODELS[name]
    source = {"input_ids": torch.tensor([[30, 31, 32, 33, 34]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    store = []
    h = module(model).register_forward_hook(lambda m, a, out: store.append((out[0] if isinstance(out, tuple) else out).clone()))
    try:
        model(**source)
    finally:
        h.remove()
    clean = store[0][:, 3]

    def edit(out, start):
        if start <= 2 < start + out.shape[1]:
            out[:, 2 - start] = clean
        return out

    expected = hooked_generate(model, module(model), edit, PROMPT, **kwargs_for(use_cache))
    pv_model = pv.IntervenableModel({**comp, "intervention": pv.VanillaIntervention}, model)
    _, got = pv_model.generate(PROMPT, [source], unit_locations={"sources->base": (3, 2)}, intervene_on_prompt=True,
                               **kwargs_for(use_cache))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", MODELS)
def test_left_padded_batch_of_three_prompts(name):
    model, comp, module = MODELS[name]
    v = steer_vector(model)
    lengths = [5, 3, 4]
    ids = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 5 - n:] = torch.arange(10 + row, 10 + row + n)
        mask[row, 5 - n:] = 1
    batch = {"input_ids": ids, "attention_mask": mask}

    def edit(out, start):
        for i in range(out.shape[1]):
            if start + i == P - 1 or start + i >= P:  # each prompt's last token, then every generated token
                out[:, i] += v
        return out

    expected = hooked_generate(model, module(model), edit, batch, **kwargs_for(True))
    pv_model = pv.IntervenableModel({**comp, "intervention": pv.AdditionIntervention, "source_representation": v}, model)
    _, got = pv_model.generate(batch, unit_locations={"base": -1}, intervene_on_prompt=True, generation_steps="all",
                               **kwargs_for(True))
    assert torch.equal(got, expected)
    # Each row alone, unpadded, gives the same tokens.
    for row, n in enumerate(lengths):
        single = {"input_ids": ids[row:row + 1, 5 - n:], "attention_mask": mask[row:row + 1, 5 - n:]}
        _, alone = pv_model.generate(single, unit_locations={"base": -1}, intervene_on_prompt=True,
                                     generation_steps="all", **kwargs_for(True))
        assert torch.equal(alone[0, n:], got[row, 5:]), row


@pytest.mark.parametrize("name", MODELS)
def test_seeded_sampling(name):
    model, comp, module = MODELS[name]
    v = steer_vector(model)

    edit = add_on_generated(v)

    torch.manual_seed(123)
    expected = hooked_generate(model, module(model), edit, PROMPT, max_new_tokens=MAX_NEW, do_sample=True, pad_token_id=0)
    pv_model = pv.IntervenableModel({**comp, "intervention": pv.AdditionIntervention, "source_representation": v}, model)
    torch.manual_seed(123)
    _, got = pv_model.generate(PROMPT, max_new_tokens=MAX_NEW, do_sample=True, pad_token_id=0)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", MODELS)
def test_beam_search_with_scores(name):
    model, comp, module = MODELS[name]
    v = steer_vector(model)

    edit = add_on_generated(v)

    kw = dict(max_new_tokens=MAX_NEW, num_beams=2, do_sample=False, pad_token_id=0,
              return_dict_in_generate=True, output_scores=True)
    expected = hooked_generate(model, module(model), edit, PROMPT, **kw)
    pv_model = pv.IntervenableModel({**comp, "intervention": pv.AdditionIntervention, "source_representation": v}, model)
    _, got = pv_model.generate(PROMPT, **kw)
    assert torch.equal(got.sequences, expected.sequences)
    assert torch.allclose(got.sequences_scores, expected.sequences_scores)
    for a, b in zip(got.scores, expected.scores):
        # float tolerance: another test in the same worker may change torch's thread count (reduction order)
        assert torch.allclose(a, b, atol=1e-5)


def test_collect_during_generation_returns_one_tensor_per_step():
    model, comp, module = MODELS["gpt2"]
    pv_model = pv.IntervenableModel({**comp, "intervention": pv.CollectIntervention}, model)
    (_, collected), got = pv_model.generate(PROMPT, intervene_on_prompt=True, generation_steps="all", **kwargs_for(True))
    steps = collected[0]
    assert len(steps) == MAX_NEW  # the prefill plus MAX_NEW - 1 decode steps
    store = []
    h = module(model).register_forward_hook(lambda m, a, out: store.append(_main(out)))
    try:
        model(got[:, :-1])
    finally:
        h.remove()
    full = store[0]
    assert torch.allclose(steps[0], full[:, :P], atol=1e-5)
    for j, step in enumerate(steps[1:]):
        assert torch.allclose(step, full[:, P + j:P + j + 1], atol=1e-5)


def test_bad_generation_locations():
    model, comp, _ = MODELS["gpt2"]
    pv_model = pv.IntervenableModel({**comp, "intervention": pv.ZeroIntervention}, model)
    with pytest.raises(pv.InputError, match="intervene_on_prompt=True"):
        pv_model.generate(PROMPT, unit_locations={"base": 3}, **kwargs_for(True))
    with pytest.raises(pv.LocationError, match="outside the prompt of length 5"):
        pv_model.generate(PROMPT, unit_locations={"base": 7}, intervene_on_prompt=True, **kwargs_for(True))
