"""Evaluate a model, a config or a finished run on a dataset.

Four modes, chosen from the data unless ``mode`` says:

* ``predict``: any chat dataset our data pipeline reads (alpaca, messages, sharegpt, or prompt rows
  with an ``answer``). The model answers every prompt greedily; the answers are scored against the
  references with BLEU-4 (nltk) and ROUGE-1/2/L F1 (rouge-score), as percentages.
* ``mc`` (multiple choice): rows ``{"question": str, "choices": [str, ...], "answer": ...}`` where the
  answer is the 0-based index, a letter (``"B"``) or the text of the right choice. Each choice is
  scored by its log-likelihood as the assistant's answer to the question (no generation); the
  highest wins. ``accuracy`` uses the summed log-probability, ``accuracy_norm`` the log-probability
  per character of the choice (so long choices are not penalised for their length).
* ``benchmark``: a folder in the published MMLU / C-Eval / CMMLU layout (the shipped samples:
  ``mmlu_sample``, ``ceval_sample``, ``cmmlu_sample``): k-shot prompts from the dev split, scored by
  the answer letter's log-probability and by each choice's full log-likelihood, per subject and on
  average (:mod:`kit.benchmarks`).
* ``ppl``: perplexity of the model on text rows (``{"text": ...}``, e.g. ``demo_text``).

``compare_base=True`` (``forge eval --compare-base``) scores a run and the model it started from on
the same data and writes both side by side (``comparison.json``).

    scores = kit.evaluate(run, "demo_mc")                 # -> {"accuracy": ..., "n": 20, ...}
    scores = kit.evaluate("smollm2-135m-instruct", "demo_sft", max_samples=10, max_new_tokens=64)
    scores = kit.evaluate(run, "mmlu_sample", n_shot=5, compare_base=True)   # -> {"tuned", "base", "delta"}

Outputs go to ``<run dir>/eval/<dataset>/`` (or ``output_dir``; for a bare model,
``FORGE_HOME/evals/<timestamp>-<dataset>/``): ``predictions.jsonl`` (one line per row) and
``scores.json``. Nothing is downloaded: the metrics need no nltk data files.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .benchmarks import continuation_logprobs, find_benchmark, load_benchmark, perplexity, run_benchmark
from .config import RunConfig
from .data.encode import encode_prompt
from .data.formats import DataError
from .data.pipeline import load_rows
from .data.registry import get_spec, read_spec
from .engine import Run
from .errors import UsageError
from .infer.hf import ChatModel
from .paths import forge_home
from .rundir import RunDir

MODES = ("auto", "predict", "mc", "benchmark", "ppl")
PREDICT_METRICS = ("bleu", "rouge")
MC_METRICS = ("accuracy",)
PPL_METRICS = ("perplexity",)

# Words (letters/digits/underscore runs) and single punctuation marks. CJK ideographs and kana are
# not separated by spaces, so each becomes its own token: a rough character-level stand-in; for real
# Chinese/Japanese word segmentation pass your own ``tokenize`` (e.g. jieba's lcut).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def simple_tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation; CJK characters one per token (see the note above)."""
    return _TOKEN.findall(text.lower())


# ------------------------------------------------------------------------------------------ metrics


def bleu4(prediction: str, reference: str, tokenize: Callable[[str], list[str]] = simple_tokenize) -> float:
    """Sentence BLEU-4 in percent, smoothed (Chen & Cherry method 3) so one missing n-gram order does
    not zero the score; predictions shorter than 4 tokens are scored on the orders they have."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = tokenize(prediction), tokenize(reference)
    if not hyp or not ref:
        return 100.0 if hyp == ref else 0.0
    return 100.0 * sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3, auto_reweigh=True)


class _Tok:
    """rouge-score wants an object with ``tokenize``; its default one drops every non-ASCII character."""

    def __init__(self, fn: Callable[[str], list[str]]):
        self.fn = fn

    def tokenize(self, text: str) -> list[str]:
        return self.fn(text)


def rouge(prediction: str, reference: str, tokenize: Callable[[str], list[str]] = simple_tokenize) -> dict:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 in percent."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Tok(tokenize))
    s = scorer.score(reference, prediction)
    return {
        "rouge-1": 100.0 * s["rouge1"].fmeasure,
        "rouge-2": 100.0 * s["rouge2"].fmeasure,
        "rouge-l": 100.0 * s["rougeL"].fmeasure,
    }


def score_predictions(
    predictions: list[str],
    references: list[str],
    metrics: Optional[list[str]] = None,
    tokenize: Callable[[str], list[str]] = simple_tokenize,
) -> tuple[dict, list[dict]]:
    """Mean scores over all pairs, and the per-pair scores."""
    metrics = _check_metrics(metrics, PREDICT_METRICS, "predict")
    if len(predictions) != len(references):
        raise UsageError(f"{len(predictions)} predictions for {len(references)} references")
    per = []
    for p, r in zip(predictions, references):
        row: dict = {}
        if "bleu" in metrics:
            row["bleu-4"] = bleu4(p, r, tokenize)
        if "rouge" in metrics:
            row.update(rouge(p, r, tokenize))
        per.append(row)
    keys = list(per[0]) if per else []
    return {k: sum(x[k] for x in per) / len(per) for k in keys}, per


def _check_metrics(metrics: Optional[list[str]], allowed: tuple, mode: str) -> list[str]:
    if not metrics:
        return list(allowed)
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    out = []
    for m in metrics:
        key = m.lower().replace("_", "-")
        key = {"bleu-4": "bleu", "rouge-1": "rouge", "rouge-2": "rouge", "rouge-l": "rouge", "acc": "accuracy"}.get(
            key, key
        )
        if key not in allowed:
            raise UsageError(f"metric {m!r} is not available in {mode} mode (choose from {', '.join(allowed)})")
        if key not in out:
            out.append(key)
    return out


# ------------------------------------------------------------------------------------------ data


def _is_mc(rows: list) -> bool:
    return bool(rows) and isinstance(rows[0], dict) and "choices" in rows[0] and "question" in rows[0]


def mc_rows(rows: list, source: str) -> list[dict]:
    """Validate multiple-choice rows to ``{"question", "choices", "answer": index}``; errors name the row and field."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"expected an object per row, got {type(row).__name__}", source, i)
        q = row.get("question")
        if not isinstance(q, str) or not q.strip():
            raise DataError("missing or empty question (a string)", source, i, "question")
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError("expected a list of at least two choices", source, i, "choices")
        for j, c in enumerate(choices):
            if not isinstance(c, str) or not c.strip():
                raise DataError(f"expected a non-empty string, got {c!r}", source, i, f"choices[{j}]")
        if len(set(choices)) != len(choices):
            raise DataError("two choices are identical", source, i, "choices")
        out.append({"question": q, "choices": choices, "answer": _answer_index(row.get("answer"), choices, source, i)})
    return out


def _answer_index(a: Any, choices: list[str], source: str, i: int) -> int:
    n = len(choices)
    if isinstance(a, bool) or a is None:
        raise DataError(
            f"missing answer: give the 0-based index, a letter A-{chr(64 + n)} or the choice text", source, i, "answer"
        )
    if isinstance(a, int):
        if 0 <= a < n:
            return a
        raise DataError(f"answer index {a} is out of range for {n} choices (0-based)", source, i, "answer")
    if isinstance(a, str):
        if a in choices:
            return choices.index(a)
        s = a.strip()
        if len(s) == 1 and s.upper().isalpha():
            k = ord(s.upper()) - 65
            if k < n:
                return k
            raise DataError(f"answer letter {s!r} is beyond the {n} choices", source, i, "answer")
        raise DataError(f"answer {a!r} is neither a letter nor one of the choices", source, i, "answer")
    raise DataError(
        f"answer must be an index, a letter or the choice text, got {type(a).__name__}", source, i, "answer"
    )


def _predict_rows(ref: str, fmt: str, max_samples: Optional[int]) -> tuple[list[dict], str]:
    """(prompt messages, reference) pairs through the training data pipeline, so every format it reads works."""

    spec = get_spec(ref)
    source = spec.source if isinstance(spec.source, str) else f"<{spec.name}>"
    rows, kind = load_rows(ref, fmt, None, max_samples)
    out = []
    for i, r in enumerate(rows):
        if kind == "sft":
            msgs = r["messages"]
            out.append({"prompt": msgs[:-1], "reference": msgs[-1]["content"]})
        elif kind == "prompt":
            if r["answer"] is None:
                raise DataError("predict mode needs a reference answer", source, i, "answer")
            out.append({"prompt": r["prompt"], "reference": r["answer"]})
        else:
            raise DataError(
                f"predict mode needs chat rows (alpaca, messages, sharegpt) or prompt rows with an "
                f"answer; this dataset is {kind} data",
                source,
            )
    return out, source


# ------------------------------------------------------------------------------------------ model


def _source_info(source: Any) -> tuple[Any, Optional[Path], Any]:
    """(what ChatModel.load takes, the run dir if any, the RunConfig if known)."""

    if isinstance(source, Run):
        if not source.done and source.status != "pending":
            raise RuntimeError(
                f"the run is still {source.status}: wait for it to finish (or stop it) before evaluating"
            )
        return source, source.run_dir, source.config
    if isinstance(source, ChatModel):
        return source, None, None
    if RunDir.is_run_dir(source):
        return str(source), Path(source), RunDir(source).config()
    if source is None or isinstance(source, (RunConfig, dict)) or str(source).endswith((".yaml", ".yml")):
        cfg = RunConfig.coerce(source)
        return cfg, None, cfg
    return str(source), None, None


def _mc_logprobs(cm, question: str, choices: list[str]) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each choice as the assistant's answer to ``question``.

    The prompt (chat template, system prompt, question) is the same for every choice and much longer
    than the choices, so it is run once and its key/value cache shared by the batch of choices.
    """

    tok = cm.tokenizer
    prompt = encode_prompt(tok, [{"role": "user", "content": question}])
    conts = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
    for c, text in zip(conts, choices):
        if not c:
            raise DataError(f"choice {text!r} encodes to no tokens: give it some text", field="choices")
    _, sums = continuation_logprobs(cm.model, tok, prompt, conts)
    return [(lp, len(c)) for lp, c in zip(sums, conts)]


# ------------------------------------------------------------------------------------------ entry


def evaluate(
    source: Any = None,
    dataset: Optional[str] = None,
    *,
    mode: str = "auto",
    metrics: Optional[list[str]] = None,
    max_samples: Optional[int] = None,
    max_new_tokens: Optional[int] = None,
    output_dir: Optional[str] = None,
    data_format: str = "auto",
    tokenize: Callable[[str], list[str]] = simple_tokenize,
    progress: Optional[Callable[[int, int], None]] = None,
    n_shot: int = 5,
    batch_size: int = 8,
    compare_base: bool = False,
    **overrides: Any,
) -> dict:
    """Score ``source`` (a Run, run dir, RunConfig/dict/YAML, model name/path or ChatModel) on ``dataset``.

    ``dataset``: a registered name, a file, or a benchmark folder (MMLU / C-Eval / CMMLU layout, e.g.
    the shipped ``mmlu_sample``); default: the config's ``data.eval_dataset``.
    ``mode``: ``auto`` (``benchmark`` for a benchmark folder, ``mc`` when rows have question +
    choices, ``ppl`` for text rows, else ``predict``), or one of those.
    ``metrics``: predict: ``bleu``, ``rouge`` (default both); mc / benchmark: ``accuracy``; ppl: ``perplexity``.
    ``max_samples``: the first N rows (benchmark: the first N questions of each subject).
    ``n_shot``: benchmark k-shot examples from the dev split. ``batch_size``: predict mode answers
    this many prompts per batch. ``compare_base``: also evaluate the model the run started from and
    write both side by side (``comparison.json``; the base's own files under ``base/``); returns
    ``{"tuned", "base", "delta"}``.
    ``overrides``: RunConfig keys applied when the model is loaded (e.g. ``model__dtype="float32"``).
    Returns the scores (also written to ``scores.json`` next to ``predictions.jsonl``).
    """

    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if compare_base:
        return _compare_base(
            source,
            dataset,
            mode=mode,
            metrics=metrics,
            max_samples=max_samples,
            max_new_tokens=max_new_tokens,
            output_dir=output_dir,
            data_format=data_format,
            tokenize=tokenize,
            progress=progress,
            n_shot=n_shot,
            batch_size=batch_size,
            **overrides,
        )
    load_src, run_dir, cfg = _source_info(source)
    if dataset is None and cfg is not None and cfg.data.eval_dataset:
        ev = cfg.data.eval_dataset
        dataset = ev if isinstance(ev, str) else ",".join(ev)
    if not dataset:
        raise UsageError("name a dataset to evaluate on (a registered name such as demo_mc, or a file path)")
    if "," in dataset:
        raise UsageError(f"evaluate one dataset at a time; got {dataset!r}")

    bench_root = find_benchmark(dataset) if mode in ("auto", "benchmark") else None
    if mode == "benchmark" and bench_root is None:
        raise DataError(f"{dataset!r} is not a benchmark folder in the MMLU, C-Eval or CMMLU layout")
    bench, rows = None, []
    if bench_root is not None:
        mode = "benchmark"
        metrics = _check_metrics(metrics, MC_METRICS, mode)
        bench = load_benchmark(bench_root)
        spec_name = bench.name
    else:
        spec = get_spec(dataset)
        spec_name = spec.name
        raw, source_label = read_spec(spec)
        if not raw:
            raise DataError("the dataset is empty", source_label)
        if mode == "auto":
            mode = "mc" if _is_mc(raw) else "ppl" if _is_text(raw) else "predict"
        metrics = _check_metrics(metrics, {"mc": MC_METRICS, "ppl": PPL_METRICS}.get(mode, PREDICT_METRICS), mode)
        if mode == "mc":
            rows = mc_rows(raw[:max_samples] if max_samples else raw, source_label)
        elif mode == "ppl":
            rows = text_rows(raw[:max_samples] if max_samples else raw, source_label)
        else:
            if _is_mc(raw):
                raise DataError("this is a multiple-choice dataset (question + choices): use mode='mc'", source_label)
            rows, source_label = _predict_rows(dataset, data_format, max_samples)

    # where results go: the run dir if there is one, else FORGE_HOME/evals
    name = re.sub(r"[^\w.-]+", "_", spec_name)
    if output_dir:
        out = Path(output_dir).expanduser()
    elif run_dir is not None:
        out = RunDir(run_dir).eval_dir(name)
    else:
        out = forge_home() / "evals" / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    cm = ChatModel.load(load_src, **overrides)
    if mode != "predict" and cm.model is None:
        raise UsageError(
            f"{mode} scoring reads the model's log-probabilities, which the {cm.backend} back end does "
            "not expose: evaluate with generate.backend=hf"
        )
    was_training = cm.model is not None and cm.model.training
    if cm.model is not None:
        cm.model.eval()  # a Run hands over its model as trained: no dropout while scoring
    try:
        records: list[dict] = []
        if mode == "benchmark":
            scores, records = run_benchmark(cm, bench, n_shot=n_shot, max_samples=max_samples, progress=progress)
        elif mode == "ppl":
            scores, records = perplexity(cm, rows, progress=progress)
        elif mode == "mc":
            correct = correct_norm = 0
            for i, r in enumerate(rows):
                lps = _mc_logprobs(cm, r["question"], r["choices"])
                raw_scores = [lp for lp, _ in lps]
                norm_scores = [lp / max(len(c), 1) for (lp, _), c in zip(lps, r["choices"])]
                pred = max(range(len(lps)), key=raw_scores.__getitem__)
                pred_norm = max(range(len(lps)), key=norm_scores.__getitem__)
                correct += pred == r["answer"]
                correct_norm += pred_norm == r["answer"]
                records.append(
                    {
                        "row": i,
                        "question": r["question"],
                        "choices": r["choices"],
                        "answer": r["answer"],
                        "predicted": pred,
                        "predicted_norm": pred_norm,
                        "correct": pred == r["answer"],
                        "logprobs": raw_scores,
                        "tokens": [n for _, n in lps],
                    }
                )
                if progress:
                    progress(i + 1, len(rows))
            n = len(rows)
            scores: dict = {
                "accuracy": 100.0 * correct / n,
                "accuracy_norm": 100.0 * correct_norm / n,
                "chance": 100.0 * sum(1 / len(r["choices"]) for r in rows) / n,
            }
        else:
            gen = {"temperature": 0.0}  # greedy: scores are reproducible (and equal to one-at-a-time answers)
            if max_new_tokens:
                gen["max_new_tokens"] = max_new_tokens
            preds: list[str] = []
            for start in range(0, len(rows), max(1, batch_size)):
                chunk = rows[start : start + max(1, batch_size)]
                preds += cm.generate_many([r["prompt"] for r in chunk], **gen)
                if progress:
                    progress(len(preds), len(rows))
            scores, per = score_predictions(preds, [r["reference"] for r in rows], metrics, tokenize)
            for i, (r, p, s) in enumerate(zip(rows, preds, per)):
                records.append({"row": i, "prompt": r["prompt"], "reference": r["reference"], "prediction": p, **s})
    finally:
        if was_training:
            cm.model.train()

    result = {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()},
        "n": len(records),
        "mode": mode,
        "dataset": dataset,
        "model": _model_name(load_src, cfg),
        "seconds": round(time.time() - t0, 2),
        "predictions": str(out / "predictions.jsonl"),
        "output_dir": str(out),
    }
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (out / "scores.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result


def _is_text(rows: list) -> bool:
    chat_keys = ("instruction", "messages", "conversations", "prompt", "question")
    return (
        bool(rows)
        and isinstance(rows[0], dict)
        and isinstance(rows[0].get("text"), str)
        and not any(k in rows[0] for k in chat_keys)
    )


def text_rows(rows: list, source: str) -> list[str]:
    """The ``text`` of each row (perplexity mode); errors name the row and field."""
    out = []
    for i, row in enumerate(rows):
        t = row.get("text") if isinstance(row, dict) else None
        if not isinstance(t, str) or not t.strip():
            raise DataError("missing or empty text (a string)", source, i, "text")
        out.append(t)
    return out


def base_of(source: Any) -> Any:
    """The model a run (or a config with ``model.adapter_path``) started from, as a RunConfig."""

    if isinstance(source, Run):
        return source.config
    if RunDir.is_run_dir(source):
        return RunDir(source).config()
    if isinstance(source, RunConfig) and source.model.adapter_path:
        return source.replace(model__adapter_path=None)
    raise UsageError("compare_base needs a training run, a run directory or a config with model.adapter_path")


_NOT_SCORES = ("n", "seconds", "n_shot", "chance")


def _compare_base(source: Any, dataset: Optional[str], *, output_dir: Optional[str], **kw: Any) -> dict:
    """Evaluate the tuned model and its base on the same data; both, and their difference, side by side."""
    base = base_of(source)
    tuned = evaluate(source, dataset, output_dir=output_dir, **kw)
    out = Path(tuned["output_dir"])
    before = evaluate(base, tuned["dataset"], output_dir=str(out / "base"), **kw)
    delta = {
        k: round(v - before[k], 4)
        for k, v in tuned.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and k not in _NOT_SCORES
        and isinstance(before.get(k), (int, float))
    }
    if isinstance(tuned.get("subjects"), dict) and isinstance(before.get("subjects"), dict):
        delta["subjects"] = {
            s: round(v["accuracy"] - before["subjects"][s]["accuracy"], 4)
            for s, v in tuned["subjects"].items()
            if s in before["subjects"]
        }
    comparison = {
        "dataset": tuned["dataset"],
        "mode": tuned["mode"],
        "tuned": tuned,
        "base": before,
        "delta": delta,
        "output_dir": str(out),
        "comparison": str(out / "comparison.json"),
    }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1, ensure_ascii=False))
    return comparison


def _model_name(load_src: Any, cfg: Any) -> str:
    if cfg is not None:
        return cfg.model.name
    return (
        str(getattr(load_src, "name_or_path", load_src))
        if isinstance(load_src, (str, os.PathLike))
        else type(load_src).__name__
    )
