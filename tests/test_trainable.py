"""Trainable interventions: closed forms by hand, engine integration, gradients, LoReFT, SAEs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import intervenable as pv
from intervenable.errors import ConfigError, ShapeError
from intervenable.interventions import (
    AutoencoderIntervention,
    BoundlessRotatedSpaceIntervention,
    JumpReLUAutoencoderIntervention,
    LoRAIntervention,
    LoreftIntervention,
    LowRankRotatedSpaceIntervention,
    NoreftIntervention,
    PCARotatedSpaceIntervention,
    RotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
    get_intervention_class,
)
from gpt2_manual import cache, ids, manual_forward, tiny_gpt2

D = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pair(batch: int = 3, width: int = D, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, width, generator=g), torch.randn(batch, width, generator=g)


# -- closed forms ----------------------------------------------------------------
def test_rotated_space_swaps_first_k_rotated_dims():
    torch.manual_seed(0)
    iv = RotatedSpaceIntervention(embed_dim=D)
    iv.set_interchange_dim(2)
    b, s = pair()
    R = iv.rotate_layer.weight.detach()
    rb, rs = b @ R, s @ R
    expected = torch.cat([rs[:, :2], rb[:, 2:]], -1) @ R.T
    assert torch.allclose(iv(b, s), expected, atol=1e-6)
    # subspaces per row, and partition ids
    got = iv(b, s, subspaces=[[0], [3, 4], [5]])
    mixed = rb.clone()
    for row, dims in enumerate([[0], [3, 4], [5]]):
        mixed[row, dims] = rs[row, dims]
    assert torch.allclose(got, mixed @ R.T, atol=1e-6)
    part = RotatedSpaceIntervention(embed_dim=D, subspace_partition=[[0, 2], [2, 6]])
    part.load_state_dict(iv.state_dict())
    got = part(b, s, subspaces=[[1]] * 3)
    assert torch.allclose(got, torch.cat([rb[:, :2], rs[:, 2:]], -1) @ R.T, atol=1e-6)
    assert RotatedSpaceIntervention.flatten_units


def test_low_rank_rotation_projects_the_difference():
    torch.manual_seed(0)
    iv = LowRankRotatedSpaceIntervention(embed_dim=D, low_rank_dimension=3)
    b, s = pair()
    R = iv.rotate_layer.weight.detach()
    assert R.shape == (D, 3) and torch.allclose(R.T @ R, torch.eye(3), atol=1e-6)
    assert torch.allclose(iv(b, s), b + (s - b) @ R @ R.T, atol=1e-6)
    got = iv(b, s, subspaces=[[1]] * 3)
    assert torch.allclose(got, b + ((s - b) @ R[:, [1]]) @ R[:, [1]].T, atol=1e-6)


def test_boundless_and_sigmoid_masks_match_their_formulas():
    torch.manual_seed(0)
    b, s = pair()
    iv = BoundlessRotatedSpaceIntervention(embed_dim=D)
    iv.set_temperature(0.5)
    iv.set_intervention_boundaries(0.4)
    R = iv.rotate_layer.weight.detach()
    i = torch.arange(D, dtype=torch.float32)
    m = torch.sigmoid(i / 0.5) * torch.sigmoid((0.4 * D - i) / 0.5)
    assert torch.allclose(iv(b, s), ((1 - m) * (b @ R) + m * (s @ R)) @ R.T, atol=1e-6)
    assert iv.learned_width() == pytest.approx(0.4 * D)

    sm = SigmoidMaskRotatedSpaceIntervention(embed_dim=D)
    with torch.no_grad():
        sm.masks.copy_(torch.linspace(-3, 3, D))
    sm.set_temperature(2.0)
    R = sm.rotate_layer.weight.detach()
    m = torch.sigmoid(torch.linspace(-3, 3, D) / 2.0)
    assert torch.allclose(sm(b, s), ((1 - m) * (b @ R) + m * (s @ R)) @ R.T, atol=1e-6)

    mask = SigmoidMaskIntervention(embed_dim=D)
    with torch.no_grad():
        mask.mask.copy_(torch.linspace(-1, 1, D))
    mask.set_temperature(0.25)
    m = torch.sigmoid(torch.linspace(-1, 1, D) / 0.25)
    assert torch.allclose(mask(b, s), (1 - m) * b + m * s, atol=1e-6)
    assert not SigmoidMaskIntervention.flatten_units


def test_pca_rotation_matches_sklearn_basis():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    data = torch.randn(200, D, generator=g) @ torch.randn(D, D, generator=g)
    mean, std = data.mean(0), data.std(0)
    pca = PCA(n_components=D).fit(((data - mean) / std).numpy())
    ours = PCARotatedSpaceIntervention(data=data)
    comps = torch.tensor(pca.components_, dtype=torch.float32)
    # same basis up to the sign of each component
    assert torch.allclose((ours.pca_components @ comps.T).abs(), torch.eye(D), atol=1e-4)
    ref = PCARotatedSpaceIntervention(pca=pca, pca_mean=mean, pca_std=std)
    ref.set_interchange_dim(2)
    b, s = pair()
    bn, sn = (b - mean) / std, (s - mean) / std
    rb, rs = bn @ comps.T, sn @ comps.T
    expected = torch.cat([rs[:, :2], rb[:, 2:]], -1) @ comps * std + mean
    assert torch.allclose(ref(b, s), expected, atol=1e-5)


def test_autoencoder_swaps_chosen_latents():
    torch.manual_seed(0)
    iv = AutoencoderIntervention(embed_dim=D, latent_dim=5)
    iv.set_interchange_dim([1, 3])
    b, s = pair()
    enc, dec = iv.autoencoder.encoder[0], iv.autoencoder.decoder[0]
    lb = torch.relu((b - dec.bias) @ enc.weight.T + enc.bias)
    ls = torch.relu((s - dec.bias) @ enc.weight.T + enc.bias)
    lb[:, [1, 3]] = ls[:, [1, 3]]
    assert torch.allclose(iv(b, s), lb @ dec.weight.T + dec.bias, atol=1e-6)
    with pytest.raises(ConfigError, match="latent_dim"):
        AutoencoderIntervention(embed_dim=D)


def test_reft_interventions_match_their_formulas():
    torch.manual_seed(0)
    h = torch.randn(2, 4, D)
    loreft = LoreftIntervention(embed_dim=D, low_rank_dimension=2)
    R = loreft.rotate_layer.weight.detach()  # [D, 2]
    W, bias = loreft.learned_source.weight.detach(), loreft.learned_source.bias.detach()
    assert torch.allclose(R.T @ R, torch.eye(2), atol=1e-6)
    assert torch.allclose(loreft(h), h + (h @ W.T + bias - h @ R) @ R.T, atol=1e-6)
    noreft = NoreftIntervention(embed_dim=D, low_rank_dimension=2, act_fn="relu")
    P = noreft.proj_layer.weight.detach()  # [2, D]
    W, bias = noreft.learned_source.weight.detach(), noreft.learned_source.bias.detach()
    assert torch.allclose(noreft(h), h + (torch.relu(h @ W.T + bias) - h @ P.T) @ P, atol=1e-6)
    assert not loreft.needs_source and not LoreftIntervention.flatten_units


def test_lora_reads_the_module_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2)).eval()
    lora = LoRAIntervention(embed_dim=6, low_rank_dimension=3, alpha=6)
    with torch.no_grad():
        lora.lora_B.normal_()
    pv_model = pv.IntervenableModel({"component": "0.output", "intervention": lora}, model)
    x = torch.randn(4, 6)
    _, got = pv_model(x)
    A, B = lora.lora_A.detach(), lora.lora_B.detach()
    with torch.no_grad():
        expected = model[2](torch.tanh(model[0](x) + x @ A @ B * (6 / 3)))
    assert torch.allclose(got, expected, atol=1e-6)
    # a module whose input is wider than its output (called directly, reference-style args=)
    wide = LoRAIntervention(embed_dim=5, input_dim=8, low_rank_dimension=2)
    h, inp = torch.randn(3, 5), torch.randn(3, 8)
    with torch.no_grad():
        wide.lora_B.normal_()
    expected = h + inp @ wide.lora_A.detach() @ wide.lora_B.detach()
    assert torch.allclose(wide(h, args=inp), expected, atol=1e-6)
    assert get_intervention_class("LoraIntervention") is LoRAIntervention


# -- the engine: flattened units, keys, registry ----------------------------------
def test_rotation_sees_units_concatenated_in_gpt2():
    model = tiny_gpt2(n_layer=2)
    base, source = ids(2, 7, seed=1), ids(2, 7, seed=2)
    config = {"layer": 1, "component": "block_output", "max_number_of_units": 2,
              "intervention_type": "RotatedSpaceIntervention"}
    torch.manual_seed(0)
    pv_model = pv.IntervenableModel(config, model)
    key = pv_model.sorted_keys[0]
    iv = pv_model.interventions[key]
    assert isinstance(iv, RotatedSpaceIntervention) and iv.embed_dim == 2 * 32
    iv.set_interchange_dim(20)
    with torch.no_grad():
        _, got = pv_model({"input_ids": base}, [{"input_ids": source}],
                          {"sources->base": ([[[1, 4]] * 2], [[[2, 5]] * 2])})
    R = iv.rotate_layer.weight.detach()
    src = cache(model, source)[("block_output", 1)]

    def edit(name, layer, t):
        if (name, layer) != ("block_output", 1):
            return t
        rb = t[:, [2, 5]].reshape(2, 64) @ R
        rs = src[:, [1, 4]].reshape(2, 64) @ R
        new = (torch.cat([rs[:, :20], rb[:, 20:]], -1) @ R.T).reshape(2, 2, 32)
        out = t.clone()
        out[:, [2, 5]] = new
        return out

    with torch.no_grad():
        expected = manual_forward(model, base, edit)
    assert torch.allclose(got.logits, expected, atol=1e-4)


def test_missing_embed_dim_names_the_fix():
    iv = RotatedSpaceIntervention(embed_dim=4)
    with pytest.raises(ShapeError, match="max_number_of_units"):
        iv(torch.zeros(2, 8), torch.zeros(2, 8))
    with pytest.raises(ConfigError, match="embed_dim"):
        RotatedSpaceIntervention()
    with pytest.raises(ConfigError, match="low_rank_dimension"):
        LowRankRotatedSpaceIntervention(embed_dim=4)


# -- gradients and parameter management -----------------------------------------
@pytest.mark.parametrize("make", [
    lambda: RotatedSpaceIntervention(embed_dim=8),
    lambda: LowRankRotatedSpaceIntervention(embed_dim=8, low_rank_dimension=2),
    lambda: BoundlessRotatedSpaceIntervention(embed_dim=8),
    lambda: SigmoidMaskRotatedSpaceIntervention(embed_dim=8),
    lambda: SigmoidMaskIntervention(embed_dim=8),
    lambda: AutoencoderIntervention(embed_dim=8, latent_dim=4),
])
def test_gradients_reach_only_the_intervention(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    iv = make()
    if isinstance(iv, SigmoidMaskRotatedSpaceIntervention):
        with torch.no_grad():
            iv.masks.fill_(0.5)  # away from saturation, so the mask gets a gradient
    if isinstance(iv, BoundlessRotatedSpaceIntervention):
        iv.set_temperature(1.0)
    pv_model = pv.IntervenableModel({"component": "0.output", "intervention": iv}, model)
    base, source = torch.randn(4, 5), torch.randn(4, 5)
    _, out = pv_model(base, [source])
    out.pow(2).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    params = pv_model.get_trainable_parameters()
    assert params and {id(p) for p in params} == {id(p) for p in iv.parameters()}
    for name, p in pv_model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    pv_model.zero_grad()
    assert all(p.grad is None for p in params)


def test_parameter_helpers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    config = [{"component": "0.output", "intervention_type": BoundlessRotatedSpaceIntervention},
              {"component": "2.output", "intervention_type": SigmoidMaskIntervention}]
    pv_model = pv.IntervenableModel(config, model)
    keys = pv_model.sorted_keys
    assert pv_model.interventions[keys[0]].rotate_layer.weight.shape == (8, 8)
    assert pv_model.count_parameters() == 8 * 8 + 1 + 3
    names = {n for n, _ in pv_model.named_parameters()}
    assert names == {f"{keys[0]}.rotate_layer.parametrizations.weight.original",
                     f"{keys[0]}.intervention_boundaries", f"{keys[1]}.mask"}
    pv_model.set_temperature(torch.tensor(3.0, dtype=torch.bfloat16))
    assert float(pv_model.interventions[keys[0]].temperature) == 3.0
    assert float(pv_model.interventions[keys[1]].temperature) == 3.0
    pv_model.disable_intervention_gradients()
    assert pv_model.get_trainable_parameters() == []
    pv_model.enable_intervention_gradients()
    assert pv_model.count_parameters() == 8 * 8 + 1 + 3  # temperatures stay buffers
    pv_model.enable_model_gradients()
    assert pv_model.count_parameters(include_model=True) == 8 * 8 + 1 + 3 + 5 * 8 + 8 + 8 * 3 + 3


# -- demonstrations --------------------------------------------------------------
def test_loreft_learns_a_continuation_without_touching_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32,
                        initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    prompt_and_target = torch.randint(0, 64, (1, 10))
    labels = prompt_and_target.clone()
    labels[:, :6] = -100  # the loss covers the 4-token continuation only
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "low_rank_dimension": 4,
                                     "intervention_type": LoreftIntervention}, model)
    with torch.no_grad():
        start = model(input_ids=prompt_and_target, labels=labels).loss.item()
    optimizer = torch.optim.Adam(pv_model.get_trainable_parameters(), lr=1e-2)
    for _ in range(150):
        _, out = pv_model({"input_ids": prompt_and_target}, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        _, out = pv_model({"input_ids": prompt_and_target}, labels=labels)
    assert out.loss.item() < 0.1 * start, (start, out.loss.item())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # unwrapped model: unchanged loss, hooks gone
        assert model(input_ids=prompt_and_target, labels=labels).loss.item() == start


def test_jumprelu_sae_encode_decode_and_zeroed_latent():
    g = torch.Generator().manual_seed(0)
    d, k, j = 8, 12, 5
    W_enc, W_dec = torch.randn(d, k, generator=g), torch.randn(k, d, generator=g) * 0.3
    b_enc, b_dec = torch.randn(k, generator=g) * 0.1, torch.randn(d, generator=g) * 0.1
    threshold = b_enc.abs() + 0.2  # so that encode(0) is all zeros
    sae = JumpReLUAutoencoderIntervention.from_weights(W_enc, W_dec, b_enc, b_dec, threshold)

    def encode(x):
        pre = x @ W_enc + b_enc
        return torch.where(pre > threshold, pre, torch.zeros_like(pre)).clamp_min(0)

    x = torch.randn(4, d, generator=g)
    assert torch.equal(sae.encode(x), encode(x)) and (encode(x) > 0).any() and (encode(x) == 0).any()
    assert torch.allclose(sae.decode(encode(x)), encode(x) @ W_dec + b_dec, atol=1e-6)
    self_swap = sae(x, x)
    assert torch.allclose(self_swap.output, encode(x) @ W_dec + b_dec, atol=1e-6)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, d), nn.ReLU(), nn.Linear(d, 3)).eval()
    pv_model = pv.IntervenableModel({"component": "0.output", "intervention": sae}, model)
    inputs = torch.randn(6, 5, generator=g)
    with torch.no_grad():
        h = model[0](inputs)
        latent = encode(h)
        assert (latent[:, j] > 0).any()  # zeroing latent j changes something
        zeroed = latent.clone()
        zeroed[:, j] = 0
        expected = model[2](torch.relu(zeroed @ W_dec + b_dec))
        out = pv_model(inputs, source_representations=torch.zeros(d), subspaces=[[j]], return_dict=True)
    assert torch.allclose(out.intervened_outputs, expected, atol=1e-5)
    assert torch.allclose(out.latents[pv_model.sorted_keys[0]], zeroed, atol=1e-6)
    with torch.no_grad():
        changed = model[2](torch.relu(latent @ W_dec + b_dec))
    assert not torch.allclose(changed, expected)


def test_training_batches_with_reference_location_keys():
    from intervenable.training import batch_unit_locations, eval_alignment, intervened_forward

    model = tiny_gpt2(n_layer=2)
    torch.manual_seed(0)
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output",
                                     "intervention_type": RotatedSpaceIntervention}, model)
    base, source = ids(3, 6, seed=4), ids(3, 6, seed=5)
    batch = {"input_ids": base, "source_input_ids": source, "labels": torch.tensor([1, 2, 3]),
             "source_0->base.0.pos": torch.tensor([[1], [2], [3]]),
             "source_0->base.1.pos": torch.tensor([[4], [4], [5]])}
    assert batch_unit_locations(pv_model, batch) == {"sources->base": ([[[1], [2], [3]]], [[[4], [4], [5]]])}
    with torch.no_grad():
        got = intervened_forward(pv_model, batch).logits
        _, direct = pv_model({"input_ids": base}, [{"input_ids": source}],
                             {"sources->base": ([[[1], [2], [3]]], [[[4], [4], [5]]])})
    assert torch.equal(got, direct.logits)

    # eval_alignment weights each batch by its size
    def fraction_of_label_one(logits_list, labels_list):
        return float((labels_list[0] == 1).float().mean())

    small = dict(batch, labels=torch.tensor([1, 1, 1]))
    large = {"input_ids": torch.cat([base, base]), "source_input_ids": torch.cat([source, source]),
             "labels": torch.tensor([0, 0, 0, 0, 0, 1]),
             "source_0->base.0.pos": torch.zeros(6, 1, dtype=torch.long),
             "source_0->base.1.pos": torch.ones(6, 1, dtype=torch.long)}
    assert eval_alignment(pv_model, [small, large], fraction_of_label_one) == pytest.approx(4 / 9)
