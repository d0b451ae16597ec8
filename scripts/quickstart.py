"""The README's main job: fine-tune the embedded default model, then chat with the result.

python3 scripts/quickstart.py [key=value ...]      e.g. train.max_steps=10
"""

import sys
from pathlib import Path

import kit
from kit.cli import ProgressPrinter

QUESTIONS = ["Who are you?", "What is the capital of France?"]

cfg = kit.RunConfig.from_yaml(Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml")
cfg = cfg.override(sys.argv[1:])

before = kit.ChatModel.load(cfg)
answers_before = {q: before.generate(q) for q in QUESTIONS}
del before

run = kit.Run(cfg)
run.subscribe(ProgressPrinter())
run.start()
losses = [l for _, l in run.losses()]
k = max(1, len(losses) // 4)
start, end = sum(losses[:k]) / k, sum(losses[-k:]) / k
print(
    f"\nloss: {start:.4f} (mean of the first {k} steps) -> {end:.4f} (mean of the last {k}) "
    f"over {len(losses)} steps; run dir {run.run_dir}"
)

for q in QUESTIONS:
    print(f"\nQ: {q}\n  before: {answers_before[q]}\n  after:  ", end="", flush=True)
    for piece in kit.chat(run, q, stream=True):
        print(piece, end="", flush=True)
    print()
