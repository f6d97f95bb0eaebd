"""Claims the docs make, checked against hand computations: None groups, DDP's optimizer, the pandas extra."""
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import intervenable as pv
from gpt2_manual import cache, ids, manual_forward, tiny_gpt2

ROOT = Path(__file__).resolve().parents[1]
MODEL = tiny_gpt2(n_layer=3)
BASE, SOURCE = {"input_ids": ids(1, 6, seed=41)}, {"input_ids": ids(1, 6, seed=42)}


def test_a_group_given_none_among_sources_is_skipped() -> None:
    """README: `pv_model(base, [None, source])` runs only the second group's interventions."""
    pv_model = pv.IntervenableModel([
        {"layer": 0, "component": "block_output", "group_key": 0},
        {"layer": 2, "component": "mlp_output", "group_key": 1},
    ], MODEL)
    _, out = pv_model(BASE, [None, SOURCE], unit_locations={"sources->base": 4})
    src = cache(MODEL, SOURCE["input_ids"])[("mlp_output", 2)]

    def only_second_group(name, layer, t):
        if (name, layer) == ("mlp_output", 2):
            t = t.clone()
            t[:, 4] = src[:, 4]
        return t

    assert torch.allclose(out.logits, manual_forward(MODEL, BASE["input_ids"], only_second_group), atol=1e-5)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "A group given `None` among other sources is skipped" in readme


def test_ddp_optimizer_gets_the_trainable_parameters_only(tmp_path) -> None:
    """docs/distributed.md: ddp.parameters() lists the frozen model too; get_trainable_parameters() does not."""
    doc = (ROOT / "docs" / "distributed.md").read_text()
    assert "torch.optim.Adam(pv_model.get_trainable_parameters()" in doc and "Adam(ddp.parameters()" not in doc
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        model = tiny_gpt2(n_layer=3)
        pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output",
                                         "intervention_type": pv.LowRankRotatedSpaceIntervention,
                                         "low_rank_dimension": 1}, model)
        ddp = torch.nn.parallel.DistributedDataParallel(pv_model)
        trainable = list(pv_model.get_trainable_parameters())
        rotation = pv_model.interventions["layer.1.block_output"][0].rotate_layer
        assert {id(p) for p in trainable} == {id(p) for p in rotation.parameters()}   # 32 x 1, by construction
        assert sum(p.numel() for p in trainable) == 32
        everything = list(ddp.parameters())
        assert sum(p.numel() for p in everything) == 32 + sum(p.numel() for p in model.parameters())
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.Adam(trainable, lr=1e-2)
        _, out = ddp(BASE, [SOURCE], unit_locations={"sources->base": 3})
        torch.nn.functional.cross_entropy(out.logits[:, -1], torch.tensor([5])).backward()
        w0 = rotation.weight.detach().clone()
        opt.step()
        assert not torch.equal(rotation.weight, w0)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    finally:
        dist.destroy_process_group()


def test_pandas_is_an_optional_extra(monkeypatch) -> None:
    toml = (ROOT / "pyproject.toml").read_text()
    runtime = re.search(r"^dependencies = \[(.*?)\]", toml, re.S | re.M).group(1)
    assert "pandas" not in runtime
    assert re.search(r'^pandas = \["pandas[^"]*"\]', toml.split("[project.optional-dependencies]")[1], re.M)
    r = pv.SweepResult(values=torch.zeros(1, 1, 1), components=["block_output"], layers=[0], positions=[0],
                       tokens=["a"])
    monkeypatch.setitem(sys.modules, "pandas", None)   # as if pandas were not installed
    with pytest.raises(ImportError, match=r"pip install 'intervenable\[pandas\]'"):
        r.to_pandas()
