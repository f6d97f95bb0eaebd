"""``intervenable trace --data`` / ``patch --data``: every example equals the API's list call, the average
heatmap and per-example results are written, and rows are checked before the weights load."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

import intervenable.cli as cli
from intervenable.cli import main
from intervenable.sweeps import DatasetResult, causal_trace, patching_sweep
from word_models import save_word_gpt2

FACTS = [{"prompt": "The native language of Drovan Teller is", "subject": "Drovan Teller", "target": "Ostic"},
         {"prompt": "The language of Mira Sol is", "subject": "Mira Sol", "target": "Velan"},
         {"prompt": "The native language of Mira is", "subject": "Mira", "target": "Ostic"}]
PAIRS = [{"base": "The native language of Mira Sol is", "source": "The native language of Drovan Teller is",
          "target": "Ostic", "marks": {"S": 4, "END": -1}},
         {"base": "The language of Drovan is", "source": "The language of Mira is", "target": "Velan",
          "marks": {"S": 3, "END": -1}}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_word_gpt2(tmp_path_factory.mktemp("words"))


def jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return str(path)


def loaded(model_dir):
    return GPT2LMHeadModel.from_pretrained(model_dir).eval(), PreTrainedTokenizerFast.from_pretrained(model_dir)


def test_trace_data_writes_the_average_and_every_example(model_dir, tmp_path, capsys) -> None:
    data = jsonl(tmp_path / "facts.jsonl", FACTS)
    code = main(["trace", "--model", model_dir, "--data", data, "--noise", "0.3", "--out", str(tmp_path / "a.png"),
                 "--save", str(tmp_path / "all.json"), "--quiet"])
    assert code == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    saved = DatasetResult.load(tmp_path / "all.json")
    model, tok = loaded(model_dir)
    ref = causal_trace(model, FACTS, noise=0.3, tokenizer=tok, progress=False)
    for a, b in zip(saved.per_example, ref.per_example):
        torch.testing.assert_close(a.values, b.values)
    out = capsys.readouterr().out
    assert "causal_trace over 3 examples" in out and "subject aligned" in out


def test_patch_data_with_marks_and_resume_folder(model_dir, tmp_path, capsys) -> None:
    data = jsonl(tmp_path / "pairs.jsonl", PAIRS)
    argv = ["patch", "--model", model_dir, "--data", data, "--save-to", str(tmp_path / "run"),
            "--save", str(tmp_path / "p.pt"), "--normalise", "--quiet"]
    assert main(argv) == 0
    saved = DatasetResult.load(tmp_path / "p.pt")
    model, tok = loaded(model_dir)
    ref = patching_sweep(model, PAIRS, tokenizer=tok, progress=False)
    for a, b in zip(saved.per_example, ref.per_example):
        torch.testing.assert_close(a.values, b.values)
    assert saved.average().tokens == ["S", "END"]
    assert len(list((tmp_path / "run").glob("example-*.safetensors"))) == 2
    capsys.readouterr()
    assert main(argv) == 0  # the rerun resumes: every example is already there
    assert "marks aligned" in capsys.readouterr().out


def test_rows_are_checked_before_the_weights_load(model_dir, tmp_path, capsys, monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("the weights were loaded before the rows were checked")
    monkeypatch.setattr(cli, "load_weights", refuse)
    bad = jsonl(tmp_path / "bad.jsonl", [FACTS[0], {**FACTS[1], "subject": "Drovan"}])
    assert main(["trace", "--model", model_dir, "--data", bad, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "example 1 (row 2)" in err and "'Drovan' does not occur" in err
    (tmp_path / "broken.jsonl").write_text('{"prompt": "The language"}\n{oops\n')
    assert main(["trace", "--model", model_dir, "--data", str(tmp_path / "broken.jsonl")]) == 2
    assert "line 2: not valid JSON" in capsys.readouterr().err
    assert main(["patch", "--model", model_dir, "--data", jsonl(tmp_path / "f.jsonl", FACTS)]) == 2
    assert "has no 'base'" in capsys.readouterr().err
    assert main(["trace", "--model", model_dir, "--data", bad, "--prompt", "The language"]) == 2
    assert "drop --prompt" in capsys.readouterr().err
    assert main(["trace", "--model", model_dir, "--prompt", "The language of Mira is", "--subject", "Mira",
                 "--align", "end"]) == 2
    assert "--align applies to a dataset" in capsys.readouterr().err
