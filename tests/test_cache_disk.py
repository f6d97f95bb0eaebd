"""cache_to_disk / load_cache: every stored token equals a plain-hook forward of its sequence alone;
SIGKILL at every step and at random moments, then a rerun, leaves the uninterrupted run's bytes;
two gloo ranks write the same files as one process; damaged or foreign folders are refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import intervenable as pv
from intervenable.errors import ConfigError, InputError
from intervenable.io import SerializationError
from cache_kill_harness import ARGS, make_data, make_model, shard_hashes

torch.set_num_threads(1)
HARNESS = os.path.join(os.path.dirname(__file__), "cache_kill_harness.py")


def folder_bytes(folder: str) -> Dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as handle:
            out[name] = handle.read()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("reference"))
    pv.cache_to_disk(make_model(), make_data(), folder, **ARGS)
    return folder


def test_each_token_equals_its_sequence_run_alone(reference: str) -> None:
    model, data = make_model(), make_data()
    ds = pv.load_cache(reference, verify=True)
    assert len(ds) == sum(len(s) for s in data) == ds.manifest["tokens"]
    assert ds.sites == ["block_output.0", "block_output.2", "head_attention_value_output.0",
                        "head_attention_value_output.2"]
    i = 0
    for n, seq in enumerate(data):
        seen = {}
        handles = [model.transformer.h[l].register_forward_hook(
            lambda m, a, o, l=l: seen.__setitem__(("out", l), o[0] if isinstance(o, tuple) else o)) for l in (0, 2)]
        handles += [model.transformer.h[l].attn.c_proj.register_forward_pre_hook(
            lambda m, a, l=l: seen.__setitem__(("z", l), a[0])) for l in (0, 2)]
        try:
            with torch.no_grad():
                model(seq[None])
        finally:
            for h in handles:
                h.remove()
        for p in range(len(seq)):
            item = ds[i]
            assert int(item["tokens"]) == int(seq[p]) and int(item["sequence"]) == n and int(item["position"]) == p
            for l in (0, 2):
                assert torch.allclose(item[f"block_output.{l}"], seen[("out", l)][0, p], atol=1e-5)
                assert torch.allclose(item[f"head_attention_value_output.{l}"], seen[("z", l)][0, p].view(4, 8),
                                      atol=1e-5)
            i += 1
    manifest = ds.manifest
    assert manifest["dtype"] == "float32" and manifest["sites"][2]["shape"] == [4, 8]
    assert all(s["tokens"] >= ARGS["shard_tokens"] for s in manifest["shards"][:-1])
    assert manifest["shards"][1]["sequences"][0] == manifest["shards"][0]["sequences"][1]


def test_the_dataset_batches_shuffles_and_reads_columns(reference: str) -> None:
    ds = pv.load_cache(reference, columns=["block_output.2", "sequence", "position"])
    picks = [17, 3, 150, 3, len(ds) - 1, -1]
    batch = ds.__getitems__(picks)
    for i, item in zip(picks, batch):
        assert set(item) == {"block_output.2", "sequence", "position"}
        assert all(torch.equal(item[c], ds[i][c]) for c in item)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    pairs = torch.cat([torch.stack([b["sequence"], b["position"]], 1) for b in loader])
    assert len(pairs) == len(ds) and len({tuple(p) for p in pairs.tolist()}) == len(ds)  # every token once
    column = ds.column("block_output.2")
    assert column.shape == (len(ds), 32) and torch.equal(column[150], ds[150]["block_output.2"])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_texts_with_a_tokenizer_equal_their_token_ids(tmp_path) -> None:
    from intervenable.demo import demo_facts, load_demo_model

    model, tok = load_demo_model()
    texts = [f["prompt"] for f in demo_facts()[:5]]
    a = pv.cache_to_disk(model, texts, tmp_path / "texts", tokenizer=tok, layers=[3], progress=False)
    b = pv.cache_to_disk(model, [tok(t, return_tensors="pt")["input_ids"] for t in texts], tmp_path / "ids", layers=[3],
                         progress=False)
    assert folder_bytes(str(tmp_path / "texts")) == folder_bytes(str(tmp_path / "ids"))
    assert a == b and a["sequences"] == 5


def test_kills_at_every_step_and_at_random_then_resume_are_byte_identical(reference: str) -> None:
    expected = folder_bytes(reference)
    ref_shards = shard_hashes(reference)
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, OMP_NUM_THREADS="1", KILLS="4")
        subprocess.run([sys.executable, HARNESS, out], check=True, env=env, timeout=600)
        with open(os.path.join(out, "manifest.json")) as handle:
            report = json.load(handle)
        assert folder_bytes(os.path.join(out, "count")) == expected
        assert any(s.startswith("renamed shard-") for s in report["steps"])
        assert any(s.startswith("renamed manifest") for s in report["steps"])
        killed = 0
        for state in report["stepwise"]:
            assert state["status"] == "SIGKILL", state
            killed += 1
            # only complete shards exist under their final names: each is exactly the reference's
            assert all(ref_shards[name] == digest for name, digest in state["left"].items()), state
            assert state["resumed"] == "exit 0"
            assert folder_bytes(state["dir"]) == expected, state["step"]
        assert killed == len(report["steps"])
        for scenario in report["random"]:
            for kill in scenario["kills"]:
                assert all(ref_shards[name] == digest for name, digest in kill["left"].items()), scenario
            assert scenario["resumed"] == "exit 0"
            assert folder_bytes(scenario["dir"]) == expected, scenario
        # each scenario's first kill lands inside a window that starts after the first shard is renamed
        # and ends before the last one is: a part of the shards is left, whatever the machine's load
        first = [s["kills"][0] for s in report["random"]]
        assert all(k["status"] == "SIGKILL" for k in first), first
        assert all(0 < len(k["left"]) < len(ref_shards) for k in first), first
        assert all(k["start"] <= k["steps_done"] for k in first), first


def _rank(rank: int, world: int, init_file: str, folder: str) -> None:
    import sys as _sys

    _sys.path.insert(0, os.path.dirname(__file__))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from cache_kill_harness import ARGS as args, make_data as data, make_model as model

        pv.cache_to_disk(model(), data(), folder, **args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_write_what_one_process_writes(reference: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "cache")
        # spawned, not forked: a pytest-xdist worker runs threads of its own (execnet), and a fork copies their locks
        mp.spawn(_rank, args=(2, os.path.join(tmp, "init"), folder), nprocs=2, join=True)
        assert folder_bytes(folder) == folder_bytes(reference)


def test_foreign_damaged_and_unfinished_folders_are_refused(reference: str, tmp_path) -> None:
    model, data = make_model(), make_data()
    folder = str(tmp_path / "c")
    pv.cache_to_disk(model, data, folder, **ARGS)
    with pytest.raises(SerializationError, match="another run"):
        pv.cache_to_disk(model, data, folder, **dict(ARGS, layers=[1]))
    with pytest.raises(SerializationError, match="another run"):
        pv.cache_to_disk(model, data[::-1], folder, **ARGS)
    shard = os.path.join(folder, "shard-00001.safetensors")
    raw = bytearray(open(shard, "rb").read())
    raw[-1] ^= 0xFF
    open(shard, "wb").write(bytes(raw))
    pv.load_cache(folder)  # sizes match: the damage shows only when hashes are checked
    with pytest.raises(SerializationError, match="does not match its hash"):
        pv.load_cache(folder, verify=True)
    os.remove(os.path.join(folder, "manifest.json"))
    with pytest.raises(SerializationError, match="Rerun cache_to_disk"):
        pv.load_cache(folder)
    with pytest.raises(InputError, match="tokenizer="):
        pv.cache_to_disk(model, ["a text"], str(tmp_path / "t"))
    with pytest.raises(InputError, match="no tokens"):
        pv.cache_to_disk(model, [torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], str(tmp_path / "e"))
    with pytest.raises(ConfigError, match="shard_tokens"):
        pv.cache_to_disk(model, data, str(tmp_path / "s"), shard_tokens=0)


def test_shards_get_the_umask_modes_and_the_folder_holds_nothing_else(tmp_path) -> None:
    """Shards are serialised in memory and written by us (safetensors' save_file writes a 0600 .tmpXXXXXX sibling,
    which a kill mid-write would leave behind where no cleanup knows it)."""
    old = os.umask(0o027)
    try:
        pv.cache_to_disk(make_model(), make_data()[:8], tmp_path / "c", **ARGS)
    finally:
        os.umask(old)
    names = sorted(os.listdir(tmp_path / "c"))
    assert names == ["manifest.json"] + [f"shard-{k:05d}.safetensors" for k in range(len(names) - 1)]
    assert {oct(os.stat(tmp_path / "c" / n).st_mode & 0o777) for n in names} == {oct(0o640)}
