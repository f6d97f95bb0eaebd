"""Hub sharing through the real huggingface_hub code, without network.

Downloads: a repo placed in a temporary hub cache in huggingface_hub's layout
(``models--user--repo/{blobs,snapshots/<commit>,refs/<name>}``), read in
offline mode. Uploads: a tiny HTTP server on 127.0.0.1 that answers the hub
routes ``create_repo`` and ``upload_folder`` use (create, preupload, commit).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict

import pytest
import torch
from torch import nn

import intervenable as pv
from io_models import WIDTH, tiny_gpt2
from intervenable.io import CONFIG_NAME, TENSORS_NAME, SerializationError

BASE = {"input_ids": torch.tensor([[3, 14, 15, 9, 2]])}
REPO = "someone/steering"






def steering(vector: torch.Tensor) -> Any:
    return pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention,
                                 "source_representation": vector}, tiny_gpt2())


def steered(pv_model: Any) -> torch.Tensor:
    with torch.no_grad():
        return pv_model(BASE, unit_locations={"base": 1})[1].logits


def put_in_hub_cache(cache: str, repo_id: str, files: Dict[str, bytes], commit: str, ref: str = "main") -> None:
    """Files of one commit in the hub cache, laid out as huggingface_hub writes them."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "snapshots", commit), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for name, data in files.items():
        if name.endswith(".safetensors"):  # LFS files are named by sha256, regular ones by git blob sha1
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        with open(os.path.join(repo, "blobs", etag), "wb") as handle:
            handle.write(data)
        os.symlink(os.path.join("..", "..", "blobs", etag), os.path.join(repo, "snapshots", commit, name))
    with open(os.path.join(repo, "refs", ref), "w") as handle:
        handle.write(commit)


def saved_files(pv_model: Any, folder: str) -> Dict[str, bytes]:
    pv_model.save(folder)
    return {name: open(os.path.join(folder, name), "rb").read() for name in (CONFIG_NAME, TENSORS_NAME)}


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # the library reads the variable at import


def test_load_from_the_hub_cache_offline_with_revisions(tmp_path, offline) -> None:
    first, second = torch.randn(WIDTH), torch.randn(WIDTH)
    cache = str(tmp_path / "hub")
    commit_a, commit_b = "a" * 40, "b" * 40
    put_in_hub_cache(cache, REPO, saved_files(steering(first), str(tmp_path / "a")), commit_a, "main")
    put_in_hub_cache(cache, REPO, saved_files(steering(second), str(tmp_path / "b")), commit_b, "v2")

    main = pv.IntervenableModel.load(REPO, tiny_gpt2(), cache_dir=cache, token="hf_unused")
    assert torch.equal(steered(main), steered(steering(first)))
    tagged = pv.IntervenableModel.load(REPO, tiny_gpt2(), cache_dir=cache, revision="v2")
    assert torch.equal(steered(tagged), steered(steering(second)))
    by_hash = pv.IntervenableModel.load(REPO, tiny_gpt2(), cache_dir=cache, revision=commit_a, from_huggingface_hub=True)
    assert torch.equal(steered(by_hash), steered(steering(first)))
    assert not torch.equal(steered(main), steered(tagged))
    with pytest.raises(SerializationError, match="HF_HUB_OFFLINE"):
        pv.IntervenableModel.load("someone/not-cached", tiny_gpt2(), cache_dir=cache)


MLP_SCRIPT = """
import sys, torch, intervenable as pv
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
pv_model = pv.IntervenableModel.load(sys.argv[1], model)
with torch.no_grad():
    torch.save(pv_model(torch.linspace(-1, 1, 8).reshape(2, 4))[1], sys.argv[2])
"""


def test_environment_variables_are_honoured(tmp_path) -> None:
    """HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them, in a fresh interpreter (a small MLP, raw paths)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    vector = torch.randn(16)
    pv_model = pv.IntervenableModel({"component": "0.output", "intervention_type": pv.AdditionIntervention,
                                     "source_representation": vector}, model)
    cache = str(tmp_path / "hub")
    put_in_hub_cache(cache, REPO, saved_files(pv_model, str(tmp_path / "s")), "c" * 40)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, HF_HOME=str(tmp_path / "home"))
    out = str(tmp_path / "out.pt")
    run = subprocess.run([sys.executable, "-c", MLP_SCRIPT, REPO, out], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    with torch.no_grad():
        expected = model[2](model[1](model[0](x) + vector))  # the steering done by hand
    assert torch.allclose(torch.load(out, weights_only=True), expected, atol=1e-6)


class FakeHub(BaseHTTPRequestHandler):
    """The three hub routes an upload needs; files of each commit are kept in ``server.files``."""

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, payload: Any, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/repos/create":
            request = json.loads(body)
            self.server.created.append(request)
            host, port = self.server.server_address[:2]
            return self._reply({"url": f"http://{host}:{port}/{request.get('organization')}/{request['name']}"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                           "oid": None} for f in files]})
        if "/commit/" in self.path:
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.server.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            host, port = self.server.server_address[:2]
            repo_id = "/".join(self.path.split("/")[3:5])
            return self._reply({"commitUrl": f"http://{host}:{port}/{repo_id}/commit/{'d' * 40}", "commitOid": "d" * 40,
                                "pullRequestUrl": None})
        self._reply({"error": f"unexpected route {self.path}"}, status=404)


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)  # plain HTTP commits, no xet storage
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # this sandbox sets it; the server is local
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.requests, server.created, server.files = [], [], {}
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    # huggingface_hub < 1.0 (the one transformers 4.x takes) parses commit URLs against HF_ENDPOINT,
    # whatever endpoint= says: a private hub there is used with HF_ENDPOINT set, as here.
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    reset_hub_sessions()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, endpoint
    finally:
        server.shutdown()
        server.server_close()
        monkeypatch.undo()
        reset_hub_sessions()


def reset_hub_sessions() -> None:
    """huggingface_hub < 1.0 keeps one HTTP session per thread, made offline or not when first used: renew them."""
    from huggingface_hub import utils as hub_utils

    reset = getattr(hub_utils, "reset_sessions", None)  # gone in huggingface_hub 1.0 (httpx, checked per request)
    if reset is not None:
        reset()


def test_push_to_hub_then_load(tmp_path, fake_hub, monkeypatch) -> None:
    server, endpoint = fake_hub
    vector = torch.randn(WIDTH)
    pv_model = steering(vector)
    pv_model.push_to_hub(REPO, token="hf_secret", endpoint=endpoint, private=True)
    assert set(server.files) == {CONFIG_NAME, TENSORS_NAME}
    assert server.created[0]["name"] == "steering" and "private" in json.dumps(server.created[0])
    assert all(auth == "Bearer hf_secret" for _, auth in server.requests)
    assert [p.split("/")[-2] for p, _ in server.requests[1:]] == ["preupload", "commit"]
    assert server.requests[1][0] == f"/api/models/{REPO}/preupload/main"
    assert server.files == saved_files(pv_model, str(tmp_path / "local"))  # exactly what save() writes

    put_in_hub_cache(str(tmp_path / "hub"), REPO, server.files, "d" * 40)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    loaded = pv.IntervenableModel.load(REPO, tiny_gpt2(), cache_dir=str(tmp_path / "hub"))
    assert torch.equal(steered(loaded), steered(pv_model))


def test_save_with_save_to_hf_hub(tmp_path, fake_hub) -> None:
    server, endpoint = fake_hub
    pv_model = steering(torch.randn(WIDTH))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("not uploaded")
    pv_model.save(tmp_path / "out", save_to_hf_hub=True, hf_repo_name=REPO, endpoint=endpoint, token="hf_x")
    assert set(server.files) == {CONFIG_NAME, TENSORS_NAME}
    assert server.files[TENSORS_NAME] == (tmp_path / "out" / TENSORS_NAME).read_bytes()
    assert (tmp_path / "out" / "notes.txt").read_text() == "not uploaded"  # saving beside other files keeps them


def closed_port() -> str:
    """A loopback endpoint where nothing listens: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("offline_mode", [False, True])
def test_an_unreachable_hub_gives_our_error_and_keeps_the_local_folder(tmp_path, monkeypatch, offline_mode) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline_mode)  # refused connection, or HF_HUB_OFFLINE=1
    reset_hub_sessions()
    try:
        endpoint = closed_port()
        vector = torch.randn(WIDTH)
        pv_model = steering(vector)
        folder = tmp_path / "out"
        with pytest.raises(SerializationError, match=f"Could not reach the Hugging Face hub at {endpoint}") as info:
            pv_model.save(folder, save_to_hf_hub=True, hf_repo_name=REPO, endpoint=endpoint, token="hf_x")
        assert f"the local folder {str(folder)!r} was written" in str(info.value)
        # The cause is named: the refused connection is httpx's ConnectError (huggingface_hub >= 1.0) or requests'
        # ConnectionError (huggingface_hub < 1.0, with transformers 4.x).
        causes = ("OfflineModeIsEnabled",) if offline_mode else ("ConnectError", "ConnectionError")
        assert any(cause in str(info.value) for cause in causes), str(info.value)
        assert steered(pv.IntervenableModel.load(str(folder), tiny_gpt2())).equal(steered(pv_model))  # the folder is complete

        with pytest.raises(SerializationError, match="Nothing was uploaded and nothing was kept on disk"):
            pv_model.push_to_hub(REPO, endpoint=endpoint)
    finally:
        monkeypatch.undo()
        reset_hub_sessions()


def test_a_folder_left_by_a_killed_save_uploads_its_current_version(tmp_path, fake_hub, monkeypatch) -> None:
    """Killed just after its commit point, a save leaves the new files in a hidden commit folder: they are sent."""
    from intervenable.io import atomic
    from intervenable.io.hub import push_folder

    server, endpoint = fake_hub
    old, new = steering(torch.randn(WIDTH)), steering(torch.randn(WIDTH))
    folder = str(tmp_path / "out")
    old.save(folder)

    def die_at_commit(step: str) -> None:
        if step == "committed":
            raise KeyboardInterrupt  # stands in for a kill: nothing after this step runs

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(atomic, "after_step", die_at_commit)
        new.save(folder)
    assert atomic.COMMIT_NAME in os.listdir(folder)  # the state a kill at the commit point leaves
    push_folder(folder, REPO, endpoint=endpoint)
    assert set(server.files) == {CONFIG_NAME, TENSORS_NAME}
    cached = str(tmp_path / "hub")
    put_in_hub_cache(cached, REPO, server.files, "e" * 40)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert torch.equal(steered(pv.IntervenableModel.load(REPO, tiny_gpt2(), cache_dir=cached)), steered(new))
