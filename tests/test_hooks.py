"""HookSet on its own, on a toy nn.Sequential: order, ownership, removal, failures, memory."""
import gc
import weakref

import pytest
import torch
from torch import nn

import intervenable as pv
from intervenable.engine import CallState
from intervenable.hooks import HookSet


def toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def hook_counts(module: nn.Module):
    return len(module._forward_hooks), len(module._forward_pre_hooks)


def recorder(log, name):
    def hook(module, args, kwargs, output):
        log.append(name)
    return hook


def test_removal_is_newest_first_and_complete():
    model = toy()
    removed = []
    hooks = HookSet()
    for i in range(3):
        hooks.add(model[0], "output", recorder([], i))
    # wrap each handle's remove() to see the order in which HookSet removes them
    for i, handle in enumerate(hooks._handles):
        original = handle.remove
        handle.remove = (lambda orig=original, i=i: (removed.append(i), orig()))
    hooks.remove()
    assert removed == [2, 1, 0]
    assert hook_counts(model[0]) == (0, 0)
    assert len(hooks) == 0


def test_first_runs_before_a_users_earlier_hook_and_user_hook_survives():
    model = toy()
    log = []
    user = model[0].register_forward_hook(lambda m, a, out: log.append(("user", out.clone())))
    x = torch.randn(2, 3)
    with HookSet() as hooks:
        hooks.add(model[0], "output", lambda m, a, k, out: (log.append(("ours", None)), out * 0)[1], first=True)
        model(x)
    assert [name for name, _ in log] == ["ours", "user"]
    # the user's hook saw our (zeroed) output, i.e. ours ran first
    assert torch.equal(log[1][1], torch.zeros(2, 4))
    # ours is gone, the user's is still there
    assert len(model[0]._forward_hooks) == 1
    log.clear()
    model(x)
    assert [name for name, _ in log] == ["user"]
    user.remove()


def test_first_hooks_run_in_the_order_added_each_seeing_the_previous_output():
    model = toy()
    x = torch.randn(2, 3)
    with HookSet() as hooks:
        hooks.add(model[0], "output", lambda m, a, k, out: out + 1, first=True)
        hooks.add(model[0], "output", lambda m, a, k, out: out * 2, first=True)
        hooks.add(model[0], "input", lambda m, a, k: ((a[0] * 0,), k), first=True)
        got = model[0](x)
    expected = (model[0].bias + 1) * 2  # input zeroed, then +1, then *2
    assert torch.allclose(got, expected.expand(2, 4))
    assert hook_counts(model[0]) == (0, 0)


def test_absorb_moves_ownership():
    model = toy()
    outer, inner = HookSet(), HookSet()
    inner.add(model[0], "output", recorder([], "a"))
    inner.add(model[2], "input", lambda m, a, k: None, first=True)
    outer.absorb(inner)
    assert len(inner) == 0 and len(outer) == 2
    inner.remove()  # owns nothing any more
    assert hook_counts(model[0]) == (1, 0) and hook_counts(model[2]) == (0, 1)
    outer.remove()
    assert hook_counts(model[0]) == (0, 0) and hook_counts(model[2]) == (0, 0)


def test_two_sets_on_one_module_each_remove_only_their_own():
    model = toy()
    log = []
    a, b = HookSet(), HookSet()
    a.add(model[0], "output", recorder(log, "a"))
    b.add(model[0], "output", recorder(log, "b"))
    a.add(model[0], "output", lambda m, ar, k, out: log.append("a-first"), first=True)
    b.add(model[0], "output", lambda m, ar, k, out: log.append("b-first"), first=True)
    model(torch.randn(1, 3))
    # each set's first-hooks are prepended, so the newer set's run first; plain hooks keep their order
    assert log == ["b-first", "a-first", "a", "b"]
    a.remove()
    log.clear()
    model(torch.randn(1, 3))
    assert sorted(log) == ["b", "b-first"]
    b.remove()
    assert hook_counts(model[0]) == (0, 0)


def test_exception_inside_a_chained_hook_propagates_and_leaves_no_hook():
    model = toy()

    def boom(module, args, kwargs, output):
        raise RuntimeError("boom inside a hook")

    with pytest.raises(RuntimeError, match="boom inside a hook"):
        with HookSet() as hooks:
            hooks.add(model[0], "output", lambda m, a, k, out: out, first=True)
            hooks.add(model[0], "output", boom, first=True)
            model(torch.randn(1, 3))
    assert hook_counts(model[0]) == (0, 0)
    # and the model still computes what plain torch computes
    x = torch.randn(2, 3)
    assert torch.equal(model(x), model[2](torch.relu(model[0](x))))


def test_repr_names_modules_and_kinds():
    model = toy()
    hooks = HookSet()
    assert repr(hooks) == "HookSet(empty)"
    hooks.add(model[0], "output", recorder([], 0))
    hooks.add(model[0], "output", recorder([], 1))
    hooks.add(model[2], "input", lambda m, a, k: None, first=True)
    assert repr(hooks) == "HookSet(3 hooks: Linear.output x2, Linear.input)"
    hooks.remove()
    assert repr(hooks) == "HookSet(empty)"


class Keeper(pv.VanillaIntervention):
    """A vanilla swap that remembers (weakly) the tensors it saw."""

    seen = []

    def forward(self, base, source=None, subspaces=None, **kwargs):
        Keeper.seen.append(weakref.ref(base))
        Keeper.seen.append(weakref.ref(source))
        return super().forward(base, source, subspaces, **kwargs)


def test_a_call_frees_its_activations_and_closures():
    model = toy()
    pv_model = pv.IntervenableModel({"component": "0.output", "intervention": Keeper}, model)
    Keeper.seen.clear()
    base, source = torch.randn(2, 3), torch.randn(2, 3)
    for _ in range(3):
        _, out = pv_model(base, [source])
    expected = model[2](torch.relu(model[0](source)))
    assert torch.allclose(out, expected, atol=1e-6)
    del out
    gc.collect()
    assert len(Keeper.seen) == 6
    assert all(ref() is None for ref in Keeper.seen), "a call kept its activations alive"
    assert not [o for o in gc.get_objects() if type(o) is CallState]
    assert all(hook_counts(m) == (0, 0) for m in model.modules())
