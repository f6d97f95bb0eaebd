"""Deep import paths of the reference (pyreft, the tutorials) under ``sys.modules["pyvene"] = intervenable``.

Each name must be the very object intervenable exports (no second copy of a module), and a path we do
not replicate must fail with a message that says where the names are.
"""
import sys

import pytest

import intervenable
import intervenable as pv


@pytest.fixture
def alias():
    saved = {k: v for k, v in sys.modules.items() if k == "pyvene" or k.startswith("pyvene.")}
    for k in saved:
        del sys.modules[k]
    sys.modules["pyvene"] = intervenable
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == "pyvene" or k.startswith("pyvene.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_deep_paths_give_our_own_objects(alias):
    from pyvene.models.basic_utils import embed_to_distrib, top_vals
    from pyvene.models.configuration_intervenable_model import RepresentationConfig
    from pyvene.models.gpt_neox.modelings_intervenable_gpt_neox import create_gpt_neox
    from pyvene.models.gpt2.modelings_intervenable_gpt2 import create_gpt2
    from pyvene.models.intervenable_base import IntervenableModel
    from pyvene.models.layers import LowRankRotateLayer
    from pyvene.models.mlp.modelings_intervenable_mlp import create_mlp_classifier
    from pyvene.models.mlp.modelings_mlp import MLPConfig

    assert embed_to_distrib is pv.embed_to_distrib and top_vals is pv.top_vals
    assert RepresentationConfig is pv.RepresentationConfig and IntervenableModel is pv.IntervenableModel
    assert create_mlp_classifier is pv.create_mlp_classifier
    assert MLPConfig is pv.MLPConfig and create_gpt2 is pv.create_gpt2 and create_gpt_neox is pv.create_gpt_neox
    from intervenable.interventions.rotations import LowRankRotateLayer as ours
    assert LowRankRotateLayer is ours
    # every pyvene.* module is one of ours, by identity: nothing was loaded twice
    for name, module in list(sys.modules.items()):
        if name.startswith("pyvene."):
            assert module.__name__.startswith("intervenable"), name
            assert sys.modules[module.__name__] is module, name


def test_a_path_we_do_not_replicate_says_where_the_names_are(alias):
    with pytest.raises(ModuleNotFoundError, match="import its public names from the top level"):
        import pyvene.models.modeling_utils.nothing_here  # noqa: F401


def test_without_the_alias_nothing_is_answered():
    assert sys.modules.get("pyvene") is not intervenable
    with pytest.raises(ModuleNotFoundError):
        import pyvene.models.basic_utils  # noqa: F401  (pyvene itself is not installed here)
