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
