"""Multiple-choice benchmarks in their published layouts (MMLU, C-Eval, CMMLU) and perplexity.

Point ``kit.evaluate`` / ``forge eval -d`` at the folder of a full benchmark download, or at the
small samples shipped in ``data/`` (``mmlu_sample``, ``ceval_sample``, ``cmmlu_sample``). The
layouts (see ``data/README.md``):

============  ==============================================  ===============================  ==========
layout        files                                           columns                          scored on
============  ==============================================  ===============================  ==========
``mmlu``      ``dev/<subject>_dev.csv``, ``test/<subject>_test.csv``  no header: question,A,B,C,D,answer  ``test``
``ceval``     ``dev/<subject>_dev.csv``, ``val/<subject>_val.csv``    header ``id,question,A,B,C,D,answer[,explanation]``  ``val``
``cmmlu``     ``dev/<subject>.csv``, ``test/<subject>.csv``           header ``,Question,A,B,C,D,Answer``  ``test``
============  ==============================================  ===============================  ==========

The subject is the file name; the ``dev`` split gives the k-shot examples (the first ``n_shot`` of
the subject), as in the benchmarks' own evaluation code and LLaMA-Factory's. Each question is asked
as a chat in the model's template: a system line naming the subject, the shots as earlier user /
assistant turns ("...\\nAnswer:" -> "B"), then the question. Two scores, no generation:

* ``accuracy``: the answer letter's log-probability at the start of the assistant's answer (the
  highest of A-D wins), the benchmarks' standard protocol;
* ``accuracy_choice``: the full text of each choice as the answer, summed log-likelihood.

Both come per subject and averaged over all questions (``accuracy_subject_mean``: the mean of the
per-subject accuracies).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .data.formats import DataError

LETTERS = "ABCD"
LAYOUTS = ("mmlu", "ceval", "cmmlu")
EVAL_SPLIT = {"mmlu": "test", "ceval": "val", "cmmlu": "test"}
HEADERS = {
    "ceval": ["id", "question", "A", "B", "C", "D", "answer"],
    "cmmlu": ["", "Question", "A", "B", "C", "D", "Answer"],
}
# (system line, the cue the answer letter follows), in each benchmark's language
PROMPTS = {
    "mmlu": ("The following are multiple choice questions (with answers) about {subject}.", "Answer:"),
    "ceval": ("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。", "答案："),
    "cmmlu": ("以下是关于{subject}的单项选择题，请直接给出正确答案的选项。", "答案："),
}


@dataclass
class Question:
    subject: str
    question: str
    choices: list[str]
    answer: int
    source: str
    row: int


@dataclass
class Benchmark:
    name: str
    layout: str
    root: Path
    split: str
    questions: dict[str, list[Question]] = field(default_factory=dict)
    dev: dict[str, list[Question]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return sum(len(v) for v in self.questions.values())


# ------------------------------------------------------------------ finding and reading


def _split_files(root: Path, split: str) -> list[Path]:
    d = root / split
    return sorted(d.glob("*.csv")) if d.is_dir() else []


def detect_layout(root: Path) -> Optional[str]:
    """The layout of a benchmark folder, or None if it is not one."""
    root = Path(root)
    dev = _split_files(root, "dev")
    if not dev:
        return None
    first = dev[0]
    with open(first, encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), [])
    if [h.strip() for h in header[:7]] == HEADERS["cmmlu"]:
        return "cmmlu"
    if [h.strip().lower() for h in header[:7]] == [h.lower() for h in HEADERS["ceval"]]:
        return "ceval"
    if first.name.endswith("_dev.csv") and len(header) == 6:
        return "mmlu"
    return None


def find_benchmark(ref: Any) -> Optional[Path]:
    """The benchmark folder ``ref`` names (a folder in one of the layouts, or the name of a shipped
    sample such as ``mmlu_sample``), or None."""
    if not isinstance(ref, (str, Path)):
        return None
    p = Path(ref).expanduser()
    if p.is_dir() and detect_layout(p):
        return p
    if "/" not in str(ref) and "\\" not in str(ref):
        from .paths import repo_data_dir

        try:
            cand = repo_data_dir() / str(ref)
        except FileNotFoundError:
            return None
        if cand.is_dir() and detect_layout(cand):
            return cand
    return None


def _subject(path: Path, layout: str, split: str) -> str:
    suffix = f"_{split}"
    stem = path.stem
    return stem[: -len(suffix)] if layout != "cmmlu" and stem.endswith(suffix) else stem


def read_questions(path: Path, layout: str, subject: str) -> list[Question]:
    """One subject file; a bad row fails with the file, row and field."""
    out = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    if layout != "mmlu":
        rows = rows[1:]  # the header
    offset = 0 if layout == "mmlu" else 1  # the id / index column
    for i, row in enumerate(rows):
        if not any(c.strip() for c in row):
            continue
        if len(row) < offset + 6:
            raise DataError(
                f"expected {offset + 6} columns (question, A, B, C, D, answer), got {len(row)}", str(path), i
            )
        q, choices, ans = row[offset], [c for c in row[offset + 1 : offset + 5]], row[offset + 5].strip().upper()
        if not q.strip():
            raise DataError("empty question", str(path), i, "question")
        for j, c in enumerate(choices):
            if not c.strip():
                raise DataError("empty choice", str(path), i, LETTERS[j])
        if ans not in LETTERS:
            raise DataError(f"the answer must be one of A, B, C, D, got {row[offset + 5]!r}", str(path), i, "answer")
        out.append(Question(subject, q, choices, LETTERS.index(ans), str(path), i))
    return out


def load_benchmark(ref: Any, *, split: Optional[str] = None, subjects: Optional[list[str]] = None) -> Benchmark:
    """Read a benchmark folder (``ref``: a path or a shipped sample's name); ``split`` defaults to
    the layout's scored split; ``subjects`` restricts it to some subjects (by file name)."""
    root = find_benchmark(ref)
    if root is None:
        raise DataError(
            f"{ref!r} is not a benchmark folder in the MMLU, C-Eval or CMMLU layout (a dev/ folder of "
            "<subject> CSV files beside test/ or val/)"
        )
    layout = detect_layout(root)
    split = split or EVAL_SPLIT[layout]
    files = _split_files(root, split)
    if not files:
        have = [d.name for d in sorted(root.iterdir()) if d.is_dir()]
        raise DataError(f"no {split}/ files in {root} (it has {', '.join(have)})")
    bench = Benchmark(name=root.name, layout=layout, root=root, split=split)
    for f in files:
        subj = _subject(f, layout, split)
        if subjects and subj not in subjects:
            continue
        bench.questions[subj] = read_questions(f, layout, subj)
    if subjects:
        missing = sorted(set(subjects) - set(bench.questions))
        if missing:
            raise DataError(
                f"no such subject(s) in {root / split}: {', '.join(missing)}; "
                f"there are {', '.join(_subject(f, layout, split) for f in files)}"
            )
    for f in _split_files(root, "dev"):
        subj = _subject(f, layout, "dev")
        if subj in bench.questions:
            bench.dev[subj] = read_questions(f, layout, subj)
    return bench


# ------------------------------------------------------------------ prompts


def _ask(q: Question, cue: str) -> str:
    lines = [q.question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices)]
    return "\n".join(lines) + f"\n{cue}"


def messages_for(q: Question, shots: list[Question], layout: str) -> list[dict]:
    """The chat asking ``q`` after the k-shot examples ``shots``."""
    system, cue = PROMPTS[layout]
    msgs = [{"role": "system", "content": system.format(subject=q.subject.replace("_", " "))}]
    for s in shots:
        msgs += [{"role": "user", "content": _ask(s, cue)}, {"role": "assistant", "content": LETTERS[s.answer]}]
    return msgs + [{"role": "user", "content": _ask(q, cue)}]


# ------------------------------------------------------------------ log-likelihoods


def continuation_logprobs(
    model: Any, tok: Any, prompt: list[int], continuations: list[list[int]]
) -> tuple[Any, list[float]]:
    """(log-probabilities of the token after ``prompt`` [V], summed log-probability of each continuation).

    The prompt is run once; its key/value cache is shared by the batch of continuations (right
    padded: pad positions come after every real token, so they change nothing before them).
    """
    import torch

    from .infer.batch import cache_kwarg

    device = next(model.parameters()).device
    with torch.inference_mode():
        head = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)
        if not continuations:
            return first, []
        rest_needed = any(len(c) > 1 for c in continuations)
        sums = [first[c[0]].item() for c in continuations]
        if rest_needed:
            k, width = len(continuations), max(len(c) for c in continuations)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            cache = head["cache"] if "cache" in head else head["past_key_values"]  # renamed in transformers 5
            cache.batch_repeat_interleave(k)
            ids = torch.tensor([c + [pad] * (width - len(c)) for c in continuations], device=device)
            mask = torch.tensor(
                [[1] * (len(prompt) + len(c)) + [0] * (width - len(c)) for c in continuations], device=device
            )
            rest = torch.log_softmax(
                model(
                    input_ids=ids, attention_mask=mask, use_cache=False, **{cache_kwarg(model): cache}
                ).logits.float(),
                dim=-1,
            )
            for j, c in enumerate(continuations):
                sums[j] += sum(rest[j, t - 1, c[t]].item() for t in range(1, len(c)))
    return first, sums


def letter_ids(tok: Any) -> list[int]:
    """The token of each answer letter as the first token of an answer."""
    return [tok(ch, add_special_tokens=False)["input_ids"][-1] for ch in LETTERS]


def score_question(cm: Any, q: Question, shots: list[Question], layout: str) -> dict:
    from .data.encode import encode_prompt

    tok = cm.tokenizer
    prompt = encode_prompt(tok, messages_for(q, shots, layout))
    conts = [tok(c, add_special_tokens=False)["input_ids"] for c in q.choices]
    first, choice_lp = continuation_logprobs(cm.model, tok, prompt, conts)
    letter_lp = [first[i].item() for i in letter_ids(tok)]
    pred = max(range(4), key=letter_lp.__getitem__)
    pred_choice = max(range(4), key=choice_lp.__getitem__)
    return {
        "subject": q.subject,
        "row": q.row,
        "question": q.question,
        "choices": q.choices,
        "answer": LETTERS[q.answer],
        "predicted": LETTERS[pred],
        "predicted_choice": LETTERS[pred_choice],
        "correct": pred == q.answer,
        "correct_choice": pred_choice == q.answer,
        "letter_logprobs": letter_lp,
        "choice_logprobs": choice_lp,
        "prompt_tokens": len(prompt),
    }


def run_benchmark(
    cm: Any,
    bench: Benchmark,
    n_shot: int = 5,
    max_samples: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> tuple[dict, list[dict]]:
    """(scores, one record per question). ``max_samples``: the first N questions of each subject."""
    todo = [(s, q) for s, qs in bench.questions.items() for q in (qs[:max_samples] if max_samples else qs)]
    records = []
    for i, (subj, q) in enumerate(todo):
        records.append(score_question(cm, q, bench.dev.get(subj, [])[:n_shot], bench.layout))
        if progress:
            progress(i + 1, len(todo))
    subjects = {}
    for subj in bench.questions:
        rs = [r for r in records if r["subject"] == subj]
        if rs:
            subjects[subj] = {
                "accuracy": round(100.0 * sum(r["correct"] for r in rs) / len(rs), 4),
                "accuracy_choice": round(100.0 * sum(r["correct_choice"] for r in rs) / len(rs), 4),
                "n": len(rs),
            }
    n = len(records)
    scores = {
        "accuracy": 100.0 * sum(r["correct"] for r in records) / n,
        "accuracy_choice": 100.0 * sum(r["correct_choice"] for r in records) / n,
        "accuracy_subject_mean": sum(v["accuracy"] for v in subjects.values()) / len(subjects),
        "chance": 25.0,
        "layout": bench.layout,
        "split": bench.split,
        "n_shot": n_shot,
        "subjects": subjects,
    }
    return scores, records


# ------------------------------------------------------------------ perplexity


def perplexity(
    cm: Any, texts: list[str], window: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None
) -> tuple[dict, list[dict]]:
    """Perplexity over ``texts`` (exp of the mean negative log-likelihood per predicted token).

    A text longer than ``window`` tokens (default: the model's context, at most 1024) is read in
    windows with a stride of half a window, each token scored once with at least half a window of
    context before it (the strided evaluation of transformers' perplexity guide).
    """
    import torch

    model, tok = cm.model, cm.tokenizer
    device = next(model.parameters()).device
    ctx = int(getattr(getattr(model, "config", None), "max_position_embeddings", 1024) or 1024)
    window = window or min(ctx, 1024)
    stride = max(1, window // 2)
    total_nll, total_tokens, records = 0.0, 0, []
    for i, text in enumerate(texts):
        ids = tok(text)["input_ids"]
        nll, scored, prev_end = 0.0, 0, 1  # the first token has nothing before it to predict it from
        start = 0
        while prev_end < len(ids):
            end = min(start + window, len(ids))
            chunk = torch.tensor([ids[start:end]], device=device)
            with torch.inference_mode():
                logp = torch.log_softmax(model(input_ids=chunk).logits[0].float(), dim=-1)
            for t in range(max(prev_end, start + 1), end):
                nll -= logp[t - start - 1, ids[t]].item()
                scored += 1
            prev_end = end
            start += stride
        total_nll += nll
        total_tokens += scored
        records.append(
            {"row": i, "tokens": scored, "nll": nll, "perplexity": math.exp(nll / scored) if scored else float("nan")}
        )
        if progress:
            progress(i + 1, len(texts))
    if not total_tokens:
        raise DataError("the texts are too short to score (each needs at least two tokens)")
    return {
        "perplexity": math.exp(total_nll / total_tokens),
        "nll_per_token": total_nll / total_tokens,
        "tokens": total_tokens,
    }, records
