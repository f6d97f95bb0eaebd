"""Patterns from the reference's tutorials (pyvene_101, basic and advanced notebooks) that failed here
while running under pyvene 0.1.8: minimal reproductions, each against hand-written torch."""
import torch

import intervenable as pv
from gpt2_manual import ids, manual_forward, tiny_gpt2

MODEL = tiny_gpt2()
BASE = ids(1, 5, seed=7)


def _logits(out):
    return out[1].logits


# -- Boundless_DAS: the loss reads intervenable.model_config.vocab_size --------------------------
def test_model_config_is_the_wrapped_models_config():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    assert pv_model.model_config is MODEL.config
    assert pv_model.model_config.vocab_size == MODEL.transformer.wte.weight.shape[0]


# -- Sparse_Autoencoder: subspaces=[{"idx": i, "mag": m}] reach a steering intervention as given ----------
class _Steer(pv.SourcelessIntervention, pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
    def __init__(self, **kwargs):
        super().__init__(**kwargs, keep_last_dim=True)
        self.W_dec = torch.nn.Parameter(torch.randn(8, self.embed_dim, generator=torch.Generator().manual_seed(3)))

    def forward(self, base, source=None, subspaces=None):
        return base + torch.tensor(subspaces["mag"]) * self.W_dec[subspaces["idx"]]


def _steering_model():
    steer = _Steer(embed_dim=MODEL.config.n_embd)
    return steer, pv.IntervenableModel({"component": "transformer.h[0].output", "intervention": steer}, MODEL)


def test_dict_subspaces_are_given_to_the_intervention_verbatim():
    steer, pv_model = _steering_model()
    vec = 2.5 * steer.W_dec[5].detach()

    def add_at_2(name, layer, t):
        if (name, layer) != ("block_output", 0):
            return t
        t = t.clone()
        t[:, 2] += vec
        return t

    out = pv_model(base={"input_ids": BASE}, unit_locations={"base": 2}, subspaces=[{"idx": 5, "mag": 2.5}])
    torch.testing.assert_close(_logits(out), manual_forward(MODEL, BASE, add_at_2), atol=1e-5, rtol=1e-5)


def test_dict_subspaces_steer_generation_on_every_position():
    """As the tutorial's generate(..., unit_locations=None, intervene_on_prompt=True, subspaces=[{...}])."""
    steer, pv_model = _steering_model()
    vec = 4.0 * steer.W_dec[1].detach()
    def add(module, args, output):  # a block returns a tensor (or a tuple led by one in older transformers)
        return output + vec if isinstance(output, torch.Tensor) else (output[0] + vec,) + tuple(output[1:])

    handle = MODEL.transformer.h[0].register_forward_hook(add)
    try:
        expected = MODEL.generate(BASE, attention_mask=torch.ones_like(BASE), max_new_tokens=4, do_sample=False,
                                  pad_token_id=0)
    finally:
        handle.remove()
    _, steered = pv_model.generate({"input_ids": BASE}, unit_locations=None, intervene_on_prompt=True,
                                   subspaces=[{"idx": 1, "mag": 4.0}], max_new_tokens=4, do_sample=False,
                                   pad_token_id=0)
    assert steered.tolist() == expected.tolist()
