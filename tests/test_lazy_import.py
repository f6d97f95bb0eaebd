"""``import intervenable`` is light: heavy dependencies load only when a name that needs them is used."""
import subprocess
import sys

import intervenable
from intervenable.interventions import basic
from intervenable.models import gru
from intervenable.sweeps import api


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_import_and_help_load_no_torch_transformers_or_matplotlib():
    out = _run("import sys, intervenable, intervenable.cli\n"
               "intervenable.cli.build_parser().format_help()\n"
               "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'pandas') if m in sys.modules))")
    assert out == "[]"


def test_core_api_does_not_load_transformers_modeling_or_sweeps():
    out = _run("import sys, intervenable as pv\n"
               "pv.IntervenableModel, pv.IntervenableConfig, pv.VanillaIntervention, pv.list_components\n"
               "print(sorted(m for m in ('transformers.modeling_utils', 'matplotlib', 'intervenable.sweeps',"
               " 'intervenable.models.gru') if m in sys.modules))")
    assert out == "[]"


def test_every_public_name_resolves_to_its_defining_object():
    assert len(intervenable.__all__) > 60
    for name in intervenable.__all__:
        assert getattr(intervenable, name) is not None, name
        assert name in dir(intervenable)
    assert intervenable.VanillaIntervention is basic.VanillaIntervention
    assert intervenable.GRUConfig is gru.GRUConfig
    assert intervenable.causal_trace is api.causal_trace
    assert intervenable.sweeps.causal_trace is api.causal_trace   # submodules by attribute, as before
    ns = {}
    exec("from intervenable import *", ns)
    assert ns["IntervenableModel"] is intervenable.IntervenableModel and ns["__version__"] == "0.1.0"


def test_unknown_name_is_an_attribute_error():
    try:
        intervenable.NoSuchThing
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_dir_lists_only_public_names():
    import types

    listed = dir(intervenable)
    for private in ("Dict", "List", "Tuple", "TYPE_CHECKING", "annotations", "lazy_exports"):
        assert private not in listed
    extra = set(listed) - set(intervenable.__all__)
    assert all(isinstance(getattr(intervenable, name), types.ModuleType) for name in extra)  # pv.sweeps...
    assert all(getattr(intervenable, name).__name__ == f"intervenable.{name}" for name in extra)
