"""Docs as tests: every ```python and ```bash block of README.md and docs/*.md runs as written.

Blocks are found generically (a block added to any of these files later is picked up). What
changes before running is only:

* ``SUBSTITUTIONS``: hub names stand for a tiny local GPT-2 (12 layers, 64 wide) saved to a
  temporary folder, with a word-level tokenizer whose vocabulary is every word of the blocks, so
  that the prompts, targets and subjects written in the docs are one token per word; the
  ``intervenable`` command and ``.venv/bin/python`` are this interpreter.
* ``NOT_RUNNABLE``: blocks that cannot run here by nature, each with its reason.

The Python blocks of one file run in order in one namespace (as pasted into one Python prompt),
each file in a fresh namespace, all in one subprocess whose working directory mirrors the
repository (symbolic links), so that files the docs write land in a temporary folder. Bash blocks
run with ``bash -e`` in the same kind of folder. A failing block fails the test naming the block.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}

# (file or "*", language, text a line of the block contains) -> why it cannot run in the test suite
NOT_RUNNABLE = {
    ("README.md", "bash", "bash scripts/demo.sh"):
        "creates .venv and installs packages (network); scripts/test.sh would run this suite recursively. "
        "CI runs both scripts as its own steps; the demo itself is tests/test_demo.py",
    ("*", "bash", "pip install"): "installs packages from PyPI (network)",
    ("*", "bash", "benchmarks/bench_"): "a benchmark: minutes of CPU, run by hand; results are in docs/benchmarks.md",
    ("*", "python", '"me/steer"'): "needs the Hugging Face hub (network); the hub code runs against a local fake "
                                   "hub in tests/test_hub.py",
}


class Block(NamedTuple):
    file: str
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def extract_blocks(path: str) -> List[Block]:
    """Every fenced block of ``path`` whose language is Python or a shell, with its first line number."""
    lines = (ROOT / path).read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```\s*([\w+-]*)\s*$", lines[i])
        if opening:
            indent, lang = opening.group(1), opening.group(2).lower()
            j = i + 1
            while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
                j += 1
            if lang in LANGUAGES:
                code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:j])
                blocks.append(Block(path, i + 1, LANGUAGES[lang], code + "\n"))
            i = j
        i += 1
    return blocks


ALL_BLOCKS = [b for f in DOC_FILES for b in extract_blocks(f)]


def not_runnable_reason(block: Block) -> str:
    reasons = [why for (file, language, text), why in NOT_RUNNABLE.items()
               if file in ("*", block.file) and language == block.language and text in block.code]
    return "; ".join(reasons)


RUNNABLE = [b for b in ALL_BLOCKS if not not_runnable_reason(b)]


def substitute(block: Block, tiny_model: str) -> str:
    """The block's code with the ``SUBSTITUTIONS`` applied."""
    code = block.code
    if block.language == "python":
        for hub_name in SUBSTITUTIONS["python hub names"]:
            code = code.replace(repr(hub_name).replace("'", '"'), repr(tiny_model)).replace(repr(hub_name), repr(tiny_model))
    else:
        code = re.sub(r"(?m)(^|\s)\.venv/bin/python ", lambda m: f"{m.group(1)}{sys.executable} ", code)
        code = re.sub(r"(?m)^(\s*)intervenable ", lambda m: f"{m.group(1)}{sys.executable} -m intervenable.cli ", code)
    return code


SUBSTITUTIONS = {
    # hub ids that the docs load: each becomes the tiny local model's folder
    "python hub names": ["gpt2"],
    # bash: `intervenable ...` -> `python -m intervenable.cli ...`; `.venv/bin/python` -> this interpreter
}


def _vocabulary() -> List[str]:
    words = set()
    for block in ALL_BLOCKS:
        words.update(re.findall(r"\w+|[^\w\s]", block.code))
    return ["<unk>", "<pad>", "<eos>"] + sorted(words)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A GPT-2 (12 layers, width 64, 128 positions, random weights) and a word-level tokenizer of the docs' words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    vocab = _vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
                            model_max_length=128).save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=64, n_head=4, n_positions=128, vocab_size=len(vocab),
                               bos_token_id=2, eos_token_id=2, pad_token_id=1)).save_pretrained(folder)
    return str(folder)


def _mirror(folder: Path) -> Path:
    """``folder`` with a symbolic link to every top-level entry of the repository."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name not in (".git", ".venv", "out") and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry)
    return folder


def _env() -> Dict[str, str]:
    with socket.socket() as s:  # a free port for docs that start a torch.distributed process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg", TRANSFORMERS_VERBOSITY="error",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def python_results(tiny_model, tmp_path_factory) -> Dict[str, object]:
    """Run every file's Python blocks (one session per file) in one subprocess; results per file."""
    work = _mirror(tmp_path_factory.mktemp("docs-python"))
    sessions: Dict[str, list] = {}
    for block in RUNNABLE:
        if block.language == "python":
            sessions.setdefault(block.file, []).append({"id": block.id, "code": substitute(block, tiny_model)})
    blocks_file, results_file = work / "_blocks.json", work / "_results.json"
    blocks_file.write_text(json.dumps(sessions))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "docs_session.py"), str(blocks_file), str(results_file)],
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and results_file.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(results_file.read_text())


PYTHON_FILES = sorted({b.file for b in RUNNABLE if b.language == "python"})
BASH_BLOCKS = [b for b in RUNNABLE if b.language == "bash"]


@pytest.mark.parametrize("doc", PYTHON_FILES)
def test_python_blocks_run(python_results, doc) -> None:
    failure = python_results[doc]
    assert failure is None, f"block {failure['block']} failed:\n{failure['traceback']}"


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=lambda b: b.id)
def test_bash_blocks_run(block, tiny_model, tmp_path) -> None:
    proc = subprocess.run(["bash", "-e", "-c", substitute(block, tiny_model)], cwd=_mirror(tmp_path / "work"),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"block {block.id} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_every_block_is_run_or_listed_with_a_reason() -> None:
    assert {b.language for b in ALL_BLOCKS} <= {"python", "bash"}
    assert len(RUNNABLE) >= 12 and len(PYTHON_FILES) >= 5 and BASH_BLOCKS
    for (file, language, text), why in NOT_RUNNABLE.items():  # the list does not rot: each entry matches a block
        assert why and any(file in ("*", b.file) and language == b.language and text in b.code
                           for b in ALL_BLOCKS), (file, language, text)


def test_extraction_finds_fenced_blocks_in_any_position(tmp_path, monkeypatch) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("text\n```python\na = 1\n```\n```\nnot code\n```\n* item:\n  ```bash\n  echo hi\n  ```\n```py\nb = 2\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    blocks = extract_blocks("x.md")
    assert [(b.line, b.language, b.code) for b in blocks] == [(2, "python", "a = 1\n"), (9, "bash", "echo hi\n"),
                                                              (12, "python", "b = 2\n")]
