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
        assert rouge(text, text) == pytest.approx({"rouge-1": 100.0, "rouge-2": 100.0 if len(text.split()) > 1 else 0.0,
                                                   "rouge-l": 100.0})
    assert bleu4("green apples", "the capital of France is Paris") == 0.0
    assert rouge("green apples", "the capital of France is Paris") == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}


def test_partial_overlap_matches_hand_computed_values():
    pred, ref = "the cat sat on the mat", "the cat sat on a mat"
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty): (1/12) ** (1/4)
    assert bleu4(pred, ref) == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)
    r = rouge("the cat sat", "the cat sat on the mat")
    assert r["rouge-1"] == pytest.approx(100 * 2 * 1.0 * 0.5 / 1.5)          # P = 3/3, R = 3/6
    assert r["rouge-2"] == pytest.approx(100 * 2 * 1.0 * 0.4 / 1.4)          # P = 2/2, R = 2/5
    assert r["rouge-l"] == pytest.approx(r["rouge-1"])                        # LCS = 3 tokens
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
    rows = mc_rows([{"question": "q", "choices": ["a", "b", "c"], "answer": 1},
                    {"question": "q", "choices": ["a", "b", "c"], "answer": "C"},
                    {"question": "q", "choices": ["x", "yes", "z"], "answer": "yes"}], "f.jsonl")
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
    rows = [{"question": "What is the capital of France?", "choices": ["Berlin", "Paris", "A very long wrong answer"],
             "answer": 1},
            {"question": "2 + 2 =", "choices": ["4", "5"], "answer": "A"},
            {"question": "Pick the colour of the sky.", "choices": ["Blue", "Green", "Red", "Black"], "answer": "Blue"}]
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
    again = evaluate(str(tiny_model_dir), "demo_sft", max_samples=3, max_new_tokens=8, metrics=["rouge"],
                     output_dir=str(tmp_path / "p2"))
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
    print(f"demo_mc: accuracy {res['accuracy']:.1f}% (norm {res['accuracy_norm']:.1f}%), chance {res['chance']:.1f}%, "
          f"{res['seconds']:.1f}s")
    assert res["n"] == 22 and res["chance"] == 25.0
    # 11+ of 22 right is far beyond 4-choice chance (P < 0.01 for a guesser)
    assert res["accuracy"] >= 50.0, res
