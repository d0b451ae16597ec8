"""kit.evaluate: metric values on known strings, multiple-choice scoring and row errors, outputs, CLI, and the
default model beating chance on the shipped demo_mc set."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("rouge_score")
pytest.importorskip("nltk")

import kit  # noqa: E402
from kit.data import DataError  # noqa: E402
from kit.evaluate import bleu4, evaluate, mc_rows, rouge, score_predictions, simple_tokenize  # noqa: E402

# ------------------------------------------------------------------ metrics on known strings


def test_identical_prediction_scores_100_and_disjoint_scores_0():
    for text in ("The capital of France is Paris.", "Paris", "Forty two"):
        assert bleu4(text, text) == pytest.approx(100.0)
        assert rouge(text, text) == pytest.approx(
            {"rouge-1": 100.0, "rouge-2": 100.0 if len(text.split()) > 1 else 0.0, "rouge-l": 100.0}
        )
    assert bleu4("green apples", "the capital of France is Paris") == 0.0
    assert rouge("green apples", "the capital of France is Paris") == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}


def test_partial_overlap_matches_hand_computed_values():
    pred, ref = "the cat sat on the mat", "the cat sat on a mat"
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty): (1/12) ** (1/4)
    assert bleu4(pred, ref) == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)
    r = rouge("the cat sat", "the cat sat on the mat")
    assert r["rouge-1"] == pytest.approx(100 * 2 * 1.0 * 0.5 / 1.5)  # P = 3/3, R = 3/6
    assert r["rouge-2"] == pytest.approx(100 * 2 * 1.0 * 0.4 / 1.4)  # P = 2/2, R = 2/5
    assert r["rouge-l"] == pytest.approx(r["rouge-1"])  # LCS = 3 tokens
    means, per = score_predictions(["the cat sat", "Paris"], ["the cat sat on the mat", "Paris"])
    assert means["rouge-1"] == pytest.approx((r["rouge-1"] + 100) / 2) and len(per) == 2


def test_tokenizer_keeps_non_ascii_text():
    assert simple_tokenize("Hello, World! 我爱北京") == ["hello", ",", "world", "!", "我", "爱", "北", "京"]
    assert simple_tokenize("Café crème") == ["café", "crème"]
    # rouge-score's own tokenizer drops every non-ASCII character; ours scores Chinese text
    assert rouge("我爱北京", "我爱北京")["rouge-1"] == pytest.approx(100.0)
    assert rouge("我爱北京", "我爱上海")["rouge-1"] == pytest.approx(50.0)


# ------------------------------------------------------------------ multiple-choice rows


def test_mc_rows_accept_index_letter_or_text_and_name_bad_rows(tmp_path):
    rows = mc_rows(
        [
            {"question": "q", "choices": ["a", "b", "c"], "answer": 1},
            {"question": "q", "choices": ["a", "b", "c"], "answer": "C"},
            {"question": "q", "choices": ["x", "yes", "z"], "answer": "yes"},
        ],
        "f.jsonl",
    )
    assert [r["answer"] for r in rows] == [1, 2, 1]
    bad = [
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer", "out of range"),
        ({"question": "q", "choices": ["a", "b"], "answer": "D"}, "answer", "beyond"),
        ({"question": "q", "choices": ["a", "b"]}, "answer", "missing answer"),
        ({"question": "q", "choices": ["only"], "answer": 0}, "choices", "at least two"),
        ({"question": "q", "choices": ["a", ""], "answer": 0}, "choices[1]", "non-empty"),
        ({"question": "q", "choices": ["a", "a"], "answer": 0}, "choices", "identical"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "question", "empty"),
    ]
    good = {"question": "fine", "choices": ["a", "b"], "answer": 0}
    for row, field, words in bad:
        f = tmp_path / "mc.jsonl"
        f.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError) as e:
            evaluate("unused-model-not-loaded", str(f), mode="mc", output_dir=str(tmp_path / "out"))
        msg = str(e.value)
        assert str(f) in msg and "row 1" in msg and f"field '{field}'" in msg and words in msg, msg


def test_bad_mode_metric_and_dataset_choices_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        evaluate("m", "demo_mc", mode="generate")
    with pytest.raises(ValueError, match="not available in mc mode"):
        evaluate("m", "demo_mc", metrics=["bleu"])
    with pytest.raises(DataError, match="multiple-choice dataset"):
        evaluate("m", "demo_mc", mode="predict")
    with pytest.raises(ValueError, match="name a dataset"):
        evaluate(kit.RunConfig())


# ------------------------------------------------------------------ mechanics on the tiny model


def _mc_file(tmp_path):
    f = tmp_path / "mc.jsonl"
    rows = [
        {
            "question": "What is the capital of France?",
            "choices": ["Berlin", "Paris", "A very long wrong answer"],
            "answer": 1,
        },
        {"question": "2 + 2 =", "choices": ["4", "5"], "answer": "A"},
        {"question": "Pick the colour of the sky.", "choices": ["Blue", "Green", "Red", "Black"], "answer": "Blue"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_mc_logprobs_match_an_unpadded_forward(tiny_model_dir, tmp_path):
    import torch

    from kit.data.encode import encode_prompt
    from kit.infer.hf import ChatModel

    f = _mc_file(tmp_path)
    res = evaluate(str(tiny_model_dir), str(f), output_dir=str(tmp_path / "out"))
    assert res["mode"] == "mc" and res["n"] == 3
    preds = [json.loads(line) for line in open(res["predictions"])]
    assert len(preds) == 3
    # every choice's score, computed in a padded batch, equals a forward pass of that sequence alone
    cm = ChatModel.load(str(tiny_model_dir))
    tok = cm.tokenizer
    for p in preds:
        prompt = encode_prompt(tok, [{"role": "user", "content": p["question"]}])
        for choice, lp in zip(p["choices"], p["logprobs"]):
            cont = tok(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + cont])
            with torch.inference_mode():
                logp = torch.log_softmax(cm.model(input_ids=ids).logits.float()[0], -1)
            want = sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(cont))
            assert lp == pytest.approx(want, abs=1e-3)
        assert p["predicted"] == max(range(len(p["logprobs"])), key=p["logprobs"].__getitem__)
        assert p["correct"] == (p["predicted"] == p["answer"])
    assert [p["answer"] for p in preds] == [1, 0, 0]
    acc = 100 * sum(p["correct"] for p in preds) / 3
    assert res["accuracy"] == pytest.approx(acc, abs=1e-3)
    assert res["chance"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 4) / 3, abs=1e-3)
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert saved == res


def test_predict_mode_scores_greedy_answers(tiny_model_dir, tmp_path):
    res = evaluate(str(tiny_model_dir), "demo_sft", max_samples=3, max_new_tokens=8, output_dir=str(tmp_path / "p"))
    assert res["mode"] == "predict" and res["n"] == 3
    recs = [json.loads(line) for line in open(res["predictions"])]
    assert len(recs) == 3
    for r in recs:
        assert r["prompt"][-1]["role"] == "user" and r["reference"]
        assert r["bleu-4"] == pytest.approx(bleu4(r["prediction"], r["reference"]))
        assert r["rouge-l"] == pytest.approx(rouge(r["prediction"], r["reference"])["rouge-l"])
    for k in ("bleu-4", "rouge-1", "rouge-2", "rouge-l"):
        assert res[k] == pytest.approx(sum(r[k] for r in recs) / 3, abs=1e-3)
    # greedy: the same answers again
    again = evaluate(
        str(tiny_model_dir),
        "demo_sft",
        max_samples=3,
        max_new_tokens=8,
        metrics=["rouge"],
        output_dir=str(tmp_path / "p2"),
    )
    assert "bleu-4" not in again and again["rouge-l"] == res["rouge-l"]
    assert [json.loads(line)["prediction"] for line in open(again["predictions"])] == [r["prediction"] for r in recs]


def test_run_dir_results_go_into_the_run_and_cli(tiny_cfg, tmp_path, capsys):
    from kit.cli import main

    run = kit.train(tiny_cfg(max_steps=2, max_samples=8, lora_rank=4))
    assert run.status == "finished"
    res = kit.evaluate(run, "demo_mc", max_samples=4)
    assert res["dataset"] == "demo_mc" and res["n"] == 4
    assert (run.run_dir / "eval" / "demo_mc" / "scores.json").exists()
    f = _mc_file(tmp_path)
    # no dataset named: the config's data.eval_dataset
    res = kit.evaluate(tiny_cfg(eval_dataset=str(f)), output_dir=str(tmp_path / "from-config"))
    assert res["dataset"] == str(f) and res["n"] == 3
    assert main(["eval", str(run.run_dir), "-d", str(f), "-n", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and out["output_dir"] == str(run.run_dir / "eval" / "mc")
    assert json.loads((run.run_dir / "eval" / "mc" / "scores.json").read_text())["accuracy"] == out["accuracy"]
    assert main(["eval", str(run.run_dir), "-d", str(f), "--metrics", "bleu"]) == 2
    assert "not available in mc mode" in capsys.readouterr().err


# ------------------------------------------------------------------ the real default model


@pytest.mark.e2e
def test_default_model_beats_chance_on_demo_mc(default_model_dir, tmp_path):
    res = evaluate("smollm2-135m-instruct", "demo_mc", output_dir=str(tmp_path))
    print(
        f"demo_mc: accuracy {res['accuracy']:.1f}% (norm {res['accuracy_norm']:.1f}%), chance {res['chance']:.1f}%, "
        f"{res['seconds']:.1f}s"
    )
    assert res["n"] == 22 and res["chance"] == 25.0
    # 11+ of 22 right is far beyond 4-choice chance (P < 0.01 for a guesser)
    assert res["accuracy"] >= 50.0, res


# ------------------------------------------------------------------ benchmark layouts (MMLU / C-Eval / CMMLU)


def test_the_shipped_benchmark_samples_load_in_their_layouts(tmp_path):
    from kit.benchmarks import detect_layout, load_benchmark

    want = {
        "mmlu_sample": ("mmlu", "test", {"elementary_mathematics", "high_school_geography"}),
        "ceval_sample": ("ceval", "val", {"computer_network", "middle_school_geography"}),
        "cmmlu_sample": ("cmmlu", "test", {"astronomy", "nutrition"}),
    }
    for name, (layout, split, subjects) in want.items():
        b = load_benchmark(name)
        assert (b.layout, b.split, set(b.questions)) == (layout, split, subjects), name
        assert all(len(qs) == 8 for qs in b.questions.values()) and all(len(d) == 5 for d in b.dev.values())
        answers = [q.answer for qs in b.questions.values() for q in qs]
        assert sorted(set(answers)) == [0, 1, 2, 3] and all(
            len(q.choices) == 4 for qs in b.questions.values() for q in qs
        )
    assert load_benchmark("mmlu_sample", subjects=["high_school_geography"]).n == 8
    q = load_benchmark("ceval_sample").questions["computer_network"][0]
    assert q.question.startswith("以太网") and q.choices[q.answer] == "48"
    # a bad row names the file, the row and the field
    root = tmp_path / "mine"
    (root / "dev").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "dev" / "law_dev.csv").write_text("Q1?,a,b,c,d,A\n")
    (root / "test" / "law_test.csv").write_text("Q1?,a,b,c,d,B\nQ2?,a,b,c,d,E\n")
    assert detect_layout(root) == "mmlu" and detect_layout(tmp_path) is None
    with pytest.raises(DataError) as e:
        load_benchmark(str(root))
    assert "law_test.csv" in str(e.value) and "row 1" in str(e.value) and "field 'answer'" in str(e.value)
    with pytest.raises(DataError, match="no such subject"):
        load_benchmark("mmlu_sample", subjects=["astrology"])
    with pytest.raises(DataError, match="not a benchmark folder"):
        evaluate("m", str(tmp_path), mode="benchmark")


def test_benchmark_scores_are_the_letter_and_choice_log_probabilities(tiny_model_dir, tmp_path):
    import torch

    from kit.benchmarks import LETTERS, letter_ids, load_benchmark, messages_for
    from kit.data.encode import encode_prompt
    from kit.infer.hf import ChatModel

    res = evaluate(str(tiny_model_dir), "mmlu_sample", n_shot=2, max_samples=2, output_dir=str(tmp_path / "b"))
    assert res["mode"] == "benchmark" and res["n"] == 4 and res["n_shot"] == 2 and res["chance"] == 25.0
    assert set(res["subjects"]) == {"elementary_mathematics", "high_school_geography"}
    recs = [json.loads(line) for line in open(res["predictions"])]
    assert res["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in recs) / 4)
    assert res["accuracy_choice"] == pytest.approx(100 * sum(r["correct_choice"] for r in recs) / 4)
    assert res["accuracy_subject_mean"] == pytest.approx(sum(s["accuracy"] for s in res["subjects"].values()) / 2)
    # recompute one question with a plain forward pass of the whole sequence
    cm = ChatModel.load(str(tiny_model_dir))
    bench = load_benchmark("mmlu_sample")
    rec = recs[0]
    q = bench.questions[rec["subject"]][rec["row"]]
    prompt = encode_prompt(cm.tokenizer, messages_for(q, bench.dev[q.subject][:2], "mmlu"))
    assert rec["prompt_tokens"] == len(prompt)
    text = cm.tokenizer.decode(prompt)
    assert "about elementary mathematics" in text or "about high school geography" in text
    assert text.count("Answer:") == 3  # two shots and the question
    with torch.inference_mode():
        last = torch.log_softmax(cm.model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    assert rec["letter_logprobs"] == pytest.approx([last[i].item() for i in letter_ids(cm.tokenizer)], abs=1e-4)
    for choice, lp in zip(q.choices, rec["choice_logprobs"]):
        cont = cm.tokenizer(choice, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(cm.model(input_ids=torch.tensor([prompt + cont])).logits[0].float(), -1)
        assert lp == pytest.approx(sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(cont)), abs=1e-3)
    assert rec["predicted"] == LETTERS[max(range(4), key=rec["letter_logprobs"].__getitem__)]


def test_perplexity_of_a_text_set(tiny_model_dir, tmp_path):
    import math

    import torch

    from kit.benchmarks import perplexity
    from kit.infer.hf import ChatModel

    f = tmp_path / "texts.jsonl"
    texts = ["The river flows to the sea.", "Stars are far away and very hot; some are older than the Sun."]
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    res = evaluate(str(tiny_model_dir), str(f), output_dir=str(tmp_path / "p"))
    assert res["mode"] == "ppl" and res["n"] == 2
    cm = ChatModel.load(str(tiny_model_dir))
    nll = n = 0
    for t in texts:
        ids = cm.tokenizer(t)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(cm.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        nll -= sum(logp[k - 1, ids[k]].item() for k in range(1, len(ids)))
        n += len(ids) - 1
    assert res["tokens"] == n and res["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    # windows shorter than a text: every token is still scored once
    windowed, per = perplexity(cm, texts, window=6)
    assert windowed["tokens"] == n and [r["tokens"] for r in per] == [
        len(cm.tokenizer(t)["input_ids"]) - 1 for t in texts
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(DataError, match="row 1.*field 'text'"):
        evaluate("m", str(bad), mode="ppl")


def test_predict_mode_batches_give_the_one_at_a_time_answers(tiny_model_dir, tmp_path):
    a = evaluate(
        str(tiny_model_dir), "demo_sft", max_samples=5, max_new_tokens=8, batch_size=5, output_dir=str(tmp_path / "a")
    )
    b = evaluate(
        str(tiny_model_dir), "demo_sft", max_samples=5, max_new_tokens=8, batch_size=1, output_dir=str(tmp_path / "b")
    )
    preds = lambda r: [json.loads(line)["prediction"] for line in open(r["predictions"])]  # noqa: E731
    assert preds(a) == preds(b)


def test_compare_base_writes_tuned_and_base_side_by_side(tiny_cfg, tmp_path, capsys):
    from kit.cli import main

    run = kit.train(tiny_cfg(max_steps=2, max_samples=8, lora_rank=4, learning_rate=5e-2))
    res = kit.evaluate(run, "cmmlu_sample", n_shot=1, max_samples=1, compare_base=True)
    out = run.run_dir / "eval" / "cmmlu_sample"
    assert res["output_dir"] == str(out) and json.loads((out / "comparison.json").read_text()) == res
    assert json.loads((out / "scores.json").read_text()) == res["tuned"]
    assert json.loads((out / "base" / "scores.json").read_text()) == res["base"]
    assert res["tuned"]["model"] == res["base"]["model"]  # the same base model name; the tuned one has the adapter
    assert res["delta"]["accuracy"] == pytest.approx(res["tuned"]["accuracy"] - res["base"]["accuracy"])
    assert set(res["delta"]["subjects"]) == {"astronomy", "nutrition"}
    tuned_lp = [json.loads(line)["letter_logprobs"] for line in open(out / "predictions.jsonl")]
    base_lp = [json.loads(line)["letter_logprobs"] for line in open(out / "base" / "predictions.jsonl")]
    assert tuned_lp != base_lp  # the adapter was applied on one side only
    assert main(["eval", str(run.run_dir), "-d", "demo_mc", "-n", "2", "--compare-base"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert set(both) >= {"tuned", "base", "delta"} and both["tuned"]["n"] == both["base"]["n"] == 2
    with pytest.raises(ValueError, match="compare_base needs a training run"):
        evaluate("some-model", "demo_mc", compare_base=True)
    # the Board's Evaluate tab asks for the comparison and shows tuned | base | difference
    pytest.importorskip("ipywidgets")
    from kit.widgets.tools import EvaluatePanel, _scores_html

    panel = EvaluatePanel(source=run, dataset="demo_mc")
    panel.compare_base.value = True
    assert panel.options()["compare_base"] is True
    shown = _scores_html(both)
    assert "<th>base</th>" in shown and "difference" in shown and "accuracy" in shown


@pytest.mark.e2e
def test_default_model_scores_the_three_benchmark_layouts(default_model_dir, tmp_path):
    for name in ("mmlu_sample", "ceval_sample", "cmmlu_sample"):
        res = evaluate("smollm2-135m-instruct", name, n_shot=1, output_dir=str(tmp_path / name))
        print(
            f"{name}: letter {res['accuracy']:.1f}%, choice {res['accuracy_choice']:.1f}% "
            f"({res['subjects']}), {res['seconds']:.1f}s"
        )
        assert res["n"] == 16 and len(res["subjects"]) == 2 and 0 <= res["accuracy"] <= 100
