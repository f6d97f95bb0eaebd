"""Sweep arguments are checked before any forward: clear errors of our classes, and no model call."""
import pytest

from intervenable.errors import InputError, IntervenableError
from intervenable.sweeps import causal_trace, patching_sweep
from word_models import WORDS, word_gpt2

PROMPT = "The native language of Drovan Teller is"
OTHER = "The native language of Mira Sol is"


@pytest.fixture(scope="module")
def tiny():
    model, tok = word_gpt2(n_layer=3)
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    return model, tok, calls


def _refused(calls, fn, match: str, **kw) -> None:
    before = len(calls)
    with pytest.raises(InputError, match=match):
        fn(**kw)
    assert len(calls) == before, "the model ran before the argument was refused"


@pytest.mark.parametrize("window", [0, -3, 1.5])
def test_window_must_be_a_positive_count(tiny, window) -> None:
    model, tok, calls = tiny
    _refused(calls, lambda: causal_trace(model, PROMPT, OTHER, "Ostic", tokenizer=tok, window=window,
                                         components=["mlp_output"], progress=False), "window must be a whole number >= 1")


@pytest.mark.parametrize("layers, match", [([99], "Layer 99 is out of range: the model has 3 layers"),
                                           ([-1], "Layer -1 is out of range"), ([], "layers is empty"),
                                           (2, "layers must be a list"), (["1"], "whole-number layer indices")])
def test_layers_out_of_range(tiny, layers, match) -> None:
    model, tok, calls = tiny
    for sweep in (lambda: causal_trace(model, PROMPT, OTHER, "Ostic", tokenizer=tok, layers=layers, progress=False),
                  lambda: patching_sweep(model, OTHER, PROMPT, "Ostic", tokenizer=tok, layers=layers, progress=False)):
        _refused(calls, sweep, match)


def test_target_id_outside_the_vocabulary(tiny) -> None:
    model, tok, calls = tiny
    _refused(calls, lambda: causal_trace(model, PROMPT, OTHER, 999, tokenizer=tok, progress=False),
             f"target token id 999 is outside the model's vocabulary \\(ids 0..{len(WORDS) - 1}\\)")
    _refused(calls, lambda: patching_sweep(model, OTHER, PROMPT, 10, tokenizer=tok, metric="logit_diff", foil=-2,
                                           progress=False), "foil token id -2")


def test_a_list_of_prompts_is_a_dataset_whose_examples_are_checked_before_any_forward(tiny) -> None:
    model, tok, calls = tiny
    _refused(calls, lambda: causal_trace(model, [PROMPT, OTHER], target="Ostic", subject="Drovan", tokenizer=tok,
                                         progress=False), "Example 1 cannot run: The subject 'Drovan' does not occur")


@pytest.mark.parametrize("samples", [0, -1])
def test_samples_must_be_at_least_one(tiny, samples) -> None:
    model, tok, calls = tiny
    _refused(calls, lambda: causal_trace(model, PROMPT, target="Ostic", subject="Drovan Teller", tokenizer=tok,
                                         samples=samples, progress=False), "samples must be a whole number >= 1")


def test_unknown_word_target_is_refused_not_traced_as_unk(tiny) -> None:
    model, tok, calls = tiny
    assert tok.encode("Plin", add_special_tokens=False) == [0]  # the premise: it is the <unk> token
    _refused(calls, lambda: causal_trace(model, PROMPT, OTHER, "Plin", tokenizer=tok, progress=False),
             "'Plin' is not in the tokenizer's vocabulary: it is tokenised as the unknown token '<unk>'")
    r = causal_trace(model, PROMPT, OTHER, 0, tokenizer=tok, progress=False)   # an explicit id is the user's choice
    assert r.target == 0


def test_empty_components_and_bad_batch_size(tiny) -> None:
    model, tok, calls = tiny
    _refused(calls, lambda: causal_trace(model, PROMPT, OTHER, "Ostic", tokenizer=tok, components=[],
                                         progress=False), "components is empty")
    _refused(calls, lambda: patching_sweep(model, OTHER, PROMPT, "Ostic", tokenizer=tok, components="block_output",
                                           progress=False), "components must be a list")
    _refused(calls, lambda: patching_sweep(model, OTHER, PROMPT, "Ostic", tokenizer=tok, batch_size=0,
                                           progress=False), "batch_size must be a whole number >= 1")


def test_errors_are_intervenable_errors_and_value_errors(tiny) -> None:
    model, tok, _ = tiny
    with pytest.raises(IntervenableError):
        causal_trace(model, PROMPT, OTHER, "Ostic", tokenizer=tok, window=0, progress=False)
    with pytest.raises(ValueError):
        causal_trace(model, PROMPT, OTHER, "Ostic", tokenizer=tok, window=0, progress=False)


def test_summary_names_the_target_text(tiny) -> None:
    model, tok, _ = tiny
    r = causal_trace(model, PROMPT, OTHER, "Ostic", tokenizer=tok, progress=False)
    assert r.target == WORDS.index("Ostic")
    assert r.summary().splitlines()[0] == f"causal_trace: metric prob of 'Ostic' (token {WORDS.index('Ostic')})"
    p = patching_sweep(model, OTHER, PROMPT, tokenizer=tok, progress=False)   # default target: the top token
    top = int(model(**tok(PROMPT, return_tensors="pt")).logits[0, -1].argmax())
    assert f"of {WORDS[top]!r} (token {top})" in p.summary()
    assert "token 10" in causal_trace(model, tok(PROMPT)["input_ids"], tok(OTHER)["input_ids"], 10,
                                      progress=False).summary()   # no tokenizer: the id only


def test_subject_not_in_the_prompt_is_refused_before_the_default_target_run(tiny) -> None:
    model, tok, calls = tiny
    _refused(calls, lambda: causal_trace(model, PROMPT, subject="Mira Sol", tokenizer=tok, progress=False),
             "The subject 'Mira Sol' does not occur in the prompt")
