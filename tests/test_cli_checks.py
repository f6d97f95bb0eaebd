"""The command line checks its arguments before loading a model's weights, and fails fast offline."""
import os

import pytest

import intervenable.cli as cli
from intervenable.cli import main
from word_models import save_word_gpt2

PROMPT = "The native language of Drovan Teller is"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_word_gpt2(tmp_path_factory.mktemp("words"))


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if the model's weights are loaded."""
    def refuse(*a, **k):
        raise AssertionError("the weights were loaded before the arguments were checked")
    monkeypatch.setattr(cli, "load_weights", refuse)


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def trace(model_dir, *extra):
    return ["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Drovan Teller", "--quiet", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--out", "/proc/nope/x.png"], "--out '/proc/nope/x.png' cannot be written: no file can be created in /proc"),
    (["--out", "trace.jpg"], "the heatmap is written as .png, .pdf, .svg"),
    (["--save", "out.xyz"], "--save 'out.xyz': the data is written as .pt, .json, .safetensors"),
    (["--window", "0"], "--window must be >= 1"),
    (["--window", "-3"], "--window must be >= 1"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--noise", "0"], "--noise must be > 0"),
    (["--layers", "99"], "Layer 99 is out of range: the model has 3 layers"),
    (["--layers", "-1"], "--layers must be layer indices >= 0"),
    (["--target", "Plin"], "'Plin' is not in the tokenizer's vocabulary"),
    (["--target", "Ostic Velan"], "not a single token"),
    (["--dtype", "int8"], "Unknown --dtype 'int8'"),
    (["--components", "block_outptu"], "Unknown component 'block_outptu' for GPT2LMHeadModel. Did you mean 'block_output'"),
    (["--components", "transformer.h[7].mlp"], "No module 'transformer.h.7.mlp' in GPT2LMHeadModel"),
])
def test_trace_arguments_refused_before_the_weights_load(model_dir, no_weights, capsys, extra, message) -> None:
    assert message in _err(capsys, trace(model_dir, *extra))


def test_text_arguments_refused_before_the_weights_load(model_dir, no_weights, capsys) -> None:
    err = _err(capsys, ["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Zorbia"])
    assert "The subject 'Zorbia' does not occur in the prompt" in err
    err = _err(capsys, ["trace", "--model", model_dir, "--prompt", PROMPT])
    assert "Give --subject" in err
    err = _err(capsys, ["patch", "--model", model_dir, "--clean", PROMPT, "--corrupted", "The native language is"])
    assert "The prompts have 7 and 4 tokens" in err
    err = _err(capsys, ["patch", "--model", model_dir, "--clean", PROMPT, "--corrupted", PROMPT, "--save", "x.png"])
    assert "the data is written as" in err


def test_a_read_only_existing_file_is_refused(model_dir, no_weights, capsys, tmp_path) -> None:
    if os.geteuid() == 0:
        target = "/proc/version.png"  # root may write anywhere except such pseudo-filesystems
        assert "cannot be written" in _err(capsys, trace(model_dir, "--out", target))
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert "cannot be written" in _err(capsys, trace(model_dir, "--out", str(ro / "x.png")))


def test_out_with_tilde_is_expanded(model_dir, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(trace(model_dir, "--noise", "0.3", "--out", "~/plots/t.png")) == 0
    assert (tmp_path / "plots" / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert not os.path.exists("~")


def test_offline_hub_name_fails_at_once_without_network_or_transformers(capsys, monkeypatch, tmp_path) -> None:
    import socket

    import transformers

    def no_network(*a, **k):
        raise AssertionError("the network was tried")

    def no_load(*a, **k):
        raise AssertionError("transformers tried to load the name")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_load)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_load)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _err(capsys, ["trace", "--model", "some-name", "--prompt", "x", "--subject", "x"])
    assert "'some-name' is not a local folder" in err and "HF_HUB_OFFLINE is set" in err


def test_unreachable_hub_fails_with_one_quick_check(capsys, monkeypatch) -> None:
    import intervenable.models.hf as hf

    checks = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf, "_cached", lambda name, cache_dir: False)
    monkeypatch.setattr(hf, "_hub_reachable", lambda timeout=3.0: checks.append(timeout) or False)
    err = _err(capsys, ["patch", "--model", "some-org/some-name", "--clean", "a", "--corrupted", "b"])
    assert "the Hugging Face hub cannot be reached" in err and checks == [3.0]


def test_a_folder_without_config_is_named(capsys, tmp_path) -> None:
    assert "has no config.json" in _err(capsys, ["components", "--model", str(tmp_path)])


def test_an_unknown_device_is_named_before_the_weights_load(model_dir, capsys, monkeypatch) -> None:
    import transformers

    def no_load(*a, **k):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    assert "Unknown --device 'bogus'" in _err(capsys, trace(model_dir, "--device", "bogus"))
