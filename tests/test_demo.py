"""The embedded demo model: it recalls its facts, and a causal trace finds them at the subject's last token."""
import torch

import intervenable as pv
from intervenable.demo import demo_facts, load_demo_model

MODEL, TOKENIZER = load_demo_model()
FACTS = demo_facts()


def test_the_demo_model_recalls_its_facts():
    sample = FACTS[::12]  # 120 prompts over every relation and template
    prompts = [f["prompt"] for f in sample]
    correct = 0
    with torch.no_grad():
        for prompt, fact in zip(prompts, sample):
            ids = TOKENIZER(prompt, return_tensors="pt")["input_ids"]
            correct += int(MODEL(ids).logits[0, -1].argmax().item() == TOKENIZER.convert_tokens_to_ids(fact["target"]))
    assert correct / len(sample) >= 0.95


def test_causal_trace_finds_the_fact_at_the_subjects_last_token_in_early_to_middle_layers():
    n_layers = MODEL.config.n_layer
    hits = 0
    for fact in FACTS[:10]:
        r = pv.causal_trace(MODEL, fact["prompt"], target=fact["target"], subject=fact["subject"],
                            tokenizer=TOKENIZER, samples=3, progress=False)
        values = r.values[0][:, :-1]  # every position but the last token
        layer, position = divmod(int(values.argmax()), values.shape[1])
        last_subject = r.subject[1] - 1
        hits += int(position == last_subject and layer < 3 * n_layers // 4)
    assert hits >= 8


def test_heatmap_colour_bar_names_the_target_token_text(tmp_path):
    fact = FACTS[0]
    r = pv.causal_trace(MODEL, fact["prompt"], target=fact["target"], subject=fact["subject"], tokenizer=TOKENIZER,
                        layers=[0], positions=[-1], progress=False)
    text = TOKENIZER.decode([r.target])
    assert text.strip() == fact["target"].replace("Ġ", "").strip() and r.info["target_text"] == text
    fig = r.plot()
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert f"prob of {text!r}" in labels and not any(str(r.target) in lab for lab in labels)
    back = pv.SweepResult.load(r.save(tmp_path / "r.json"))
    assert back.info["target_text"] == text and f"of {text!r} (token {r.target})" in back.summary()


def _train_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "train_demo_model.py"
    spec = importlib.util.spec_from_file_location("train_demo_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_training_script_writes_the_shipped_tokenizer_files_in_a_version_independent_form(tmp_path):
    """What the script writes is byte for byte what is shipped, on every supported transformers."""
    import json

    from transformers import AutoTokenizer

    from intervenable.demo import DEMO_MODEL_DIR

    script = _train_script()
    script.save_tokenizer(script.build_tokenizer(FACTS), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (DEMO_MODEL_DIR / name).read_bytes(), name
    # A class both transformers 4.57 and 5.x have (5.x writes "TokenizersBackend", unknown to 4.x).
    assert json.loads((DEMO_MODEL_DIR / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"
    # Loaded through transformers, each word is its own id in the word-level vocabulary, nothing added.
    vocab = json.loads((DEMO_MODEL_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for fact in FACTS[:50]:
        words = (fact["prompt"] + " " + fact["target"]).split()
        assert loaded(" ".join(words))["input_ids"] == [vocab[w] for w in words]
    # No token_type_ids (transformers 4.x's default): GPT-2 would add them to the input as token 0's embedding.
    assert list(loaded("a b")) == ["input_ids", "attention_mask"]
    # Decoding does not depend on the version's default (True before transformers 4.46, False after).
    word = FACTS[0]["prompt"].split()[0]
    assert loaded.clean_up_tokenization_spaces is False
    assert loaded.decode(loaded(f"{word} ,")["input_ids"]) == f"{word} ,"
    assert (loaded.pad_token_id, loaded.unk_token_id, loaded.eos_token_id) == (vocab["<pad>"], vocab["<unk>"],
                                                                                 vocab["<eos>"])

def test_average_trace_over_facts_shows_romes_picture() -> None:
    """ROME's average over a sample of facts: restoring the MLP output helps most at the last subject token in
    the early-to-middle layers, the attention output at the last token in later layers. The peaks printed by
    the demo (demo.main.peaks) are read from the same average."""
    from intervenable.demo.main import peaks

    sample = FACTS[::30]  # 48 facts over every relation and template
    r = pv.causal_trace(MODEL, sample, tokenizer=TOKENIZER, components=["mlp_output", "attention_output"], window=3,
                        progress=False)
    avg = r.average(align="subject")
    n = MODEL.config.n_layer
    for comp, row, layers in (("mlp_output", "last subject token", range(0, n // 2)),
                              ("attention_output", "last token", range(n // 4, n))):
        v = avg[comp]
        layer, k = divmod(int(v.argmax()), v.shape[1])
        assert avg.tokens[k] == row and layer in layers, (comp, avg.tokens[k], layer)
        cells = torch.stack([x[comp][:, x.positions.index(x.subject[1] - 1 if row != "last token" else
                                                           x.positions[-1])] for x in r.per_example])
        torch.testing.assert_close(v[:, k], cells.mean(0), atol=1e-6, rtol=0)
    assert "peak" in peaks(avg)[0] and "at the last subject token" in peaks(avg)[0]

def test_plot_title_heads_the_figure_and_each_panel_keeps_its_component():
    fact = FACTS[0]
    r = pv.causal_trace(MODEL, fact["prompt"], target=fact["target"], subject=fact["subject"], tokenizer=TOKENIZER,
                        layers=[0, 1], positions=[-2, -1], components=["block_output", "mlp_output"], progress=False)
    fig = r.plot(title="My trace")
    headings = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert headings == ["causal_trace: block_output", "causal_trace: mlp_output"]
    assert fig._suptitle is not None and fig._suptitle.get_text() == "My trace"


def test_attribution_side_by_side_colour_bar_names_the_target_text():
    from intervenable.demo.main import side_by_side

    fact = FACTS[0]
    other = next(g for g in FACTS if g["relation"] == fact["relation"] and g["template_id"] == fact["template_id"]
                 and not set(g["subject"].split()) & set(fact["subject"].split()))   # same sentence, other person
    kw = dict(target=fact["target"], foil=other["target"], tokenizer=TOKENIZER, metric="logit_diff", layers=[0],
              positions=[-1])
    exact = pv.patching_sweep(MODEL, other["prompt"], fact["prompt"], progress=False, **kw)
    atp = pv.attribution_patching(MODEL, other["prompt"], fact["prompt"], **kw)
    text = TOKENIZER.decode([exact.target])
    labels = [ax.get_ylabel() for ax in side_by_side(exact, atp, atp).plot().axes]
    assert labels.count(f"logit_diff of {text!r}") == 3 and not any("token" in lab for lab in labels)
