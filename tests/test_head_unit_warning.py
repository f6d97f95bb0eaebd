"""A head component configured with unit 'pos' says what it does (every head at the positions) and how to
choose heads; what it does equals the same patch on the component without the head view."""
import warnings

import pytest
import torch

import intervenable as pv
from gpt2_manual import ids, tiny_gpt2

MODEL = tiny_gpt2(n_layer=2)


@pytest.mark.parametrize("component", ["head_attention_value_output", "head_query_output", "head_value_output"])
def test_head_component_with_unit_pos_warns_and_names_the_fix(component):
    with pytest.warns(UserWarning, match=r"split into 4 heads, but its unit is 'pos'.*\"unit\": \"h\".*\"h\.pos\"") as seen:
        head = pv.IntervenableModel({"layer": 1, "component": component}, MODEL)
    assert seen[0].filename == __file__  # attributed to the caller's line
    plain = pv.IntervenableModel({"layer": 1, "component": component.replace("head_", "")}, MODEL)
    base, source = ids(2, 6, seed=1), ids(2, 6, seed=2)
    _, got = head({"input_ids": base}, [{"input_ids": source}], unit_locations={"sources->base": 3})
    _, expected = plain({"input_ids": base}, [{"input_ids": source}], unit_locations={"sources->base": 3})
    assert torch.allclose(got.logits, expected.logits, atol=1e-6)  # what the warning says it does


@pytest.mark.parametrize("config", [{"layer": 1, "component": "head_attention_value_output", "unit": "h"},
                                    {"layer": 1, "component": "head_query_output", "unit": "h.pos"},
                                    {"layer": 1, "component": "attention_value_output"},
                                    # a collect returns [batch, heads, positions, head_dim]: nothing is hidden
                                    {"layer": 1, "component": "head_query_output", "intervention": pv.CollectIntervention}])
def test_head_units_and_plain_components_do_not_warn(config):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pv.IntervenableModel(config, MODEL)
