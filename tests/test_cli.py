"""The command line, run in-process on a tiny GPT-2 with a word-level tokenizer saved to tmp_path."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from intervenable.cli import build_parser, main
from intervenable.sweeps import SweepResult, causal_trace

WORDS = ["<unk>", "The", "native", "language", "of", "Drovan", "Teller", "Mira", "Sol", "is", "Ostic", "Velan"]
PROMPT = "The native language of Drovan Teller is"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tiny")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=len(WORDS), n_positions=16,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(d)
    return str(d)


def test_trace_writes_png_and_data_matching_the_api(model_dir, tmp_path, capsys) -> None:
    png, data = tmp_path / "t.png", tmp_path / "t.json"
    code = main(["trace", "--model", model_dir, "--prompt", PROMPT, "--target", "Ostic", "--subject", "Drovan Teller",
                 "--noise", "0.3", "--out", str(png), "--save", str(data), "--quiet"])
    assert code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    saved = SweepResult.load(data)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    ref = causal_trace(model, PROMPT, target=WORDS.index("Ostic"), subject=(4, 6), noise=0.3, tokenizer=tok,
                       progress=False)
    torch.testing.assert_close(saved.values, ref.values)
    assert saved.subject == (4, 6) and saved.tokens == PROMPT.split()
    out = capsys.readouterr().out
    assert "best" in out and str(png) in out


def test_patch_and_components(model_dir, tmp_path, capsys) -> None:
    code = main(["patch", "--model", model_dir, "--clean", PROMPT, "--corrupted",
                 "The native language of Mira Sol is", "--target", "Ostic", "--save", str(tmp_path / "p.pt"),
                 "--quiet", "--components", "block_output", "mlp_output"])
    assert code == 0
    r = SweepResult.load(tmp_path / "p.pt")
    assert r.values.shape == (2, 3, 7) and r.kind == "patching_sweep"
    capsys.readouterr()
    assert main(["components", "--model", model_dir]) == 0
    out = capsys.readouterr().out
    assert "block_output" in out and "transformer.h.0" in out.replace("[0]", ".0")


def test_errors_exit_2_with_a_clear_message(model_dir, tmp_path, capsys) -> None:
    assert main(["trace", "--model", str(tmp_path / "nope"), "--prompt", PROMPT, "--subject", "Drovan"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["trace", "--model", model_dir, "--prompt", PROMPT, "--target", "Ostic Velan",
                 "--subject", "Drovan", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a single token" in err and "'Ostic', 'Velan'" in err
    assert main(["trace", "--model", model_dir, "--prompt", "  ", "--subject", "Drovan"]) == 2
    assert "empty" in capsys.readouterr().err


def test_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out
