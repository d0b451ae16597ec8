"""The largest model each contender can LoRA-train on this machine (issue #18 item 3).

    python bench/largest_model.py                     # every contender, qwen2.5-3b -> 7b -> 14b
    python bench/largest_model.py --contenders forge-qlora --archs qwen2.5-7b qwen2.5-14b

Each contender tries the architectures of ``--archs`` from the smallest up, in its own process
(``bench/train_throughput.py``'s child, same probe), and stops at the first size it cannot train:
the row says the largest that trained, its peak RSS, and why the next size failed (out of memory:
its anonymous resident memory past ``--max-mem-gb``, mmapped checkpoint pages not counted; Forge's
pre-flight "will not fit" before loading; or another error, shown verbatim). The weights are random (built once by ``random_model``), the
sequence is short (batch 1, ``--cutoff-len`` 64 by default, 2 optimizer steps): this measures what
fits, not speed; the step's activations at that length are small beside the weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_throughput as tt  # noqa: E402

LADDER = ("smollm2-1.7b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b")
DEFAULT = ("forge", "forge-qlora", "trl", "trl-qlora", "llamafactory", "llamafactory-qlora")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    p.add_argument("--contenders", nargs="+", choices=tt.CONTENDERS, default=list(DEFAULT))
    p.add_argument("--archs", nargs="+", choices=tuple(tt.ARCHS), default=list(LADDER[1:]))
    p.add_argument("--cutoff-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-mem-gb", type=float, default=22.0, help="address-space cap of each child")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def why(res: dict) -> str:
    tail = res.get("stderr_tail", "")
    if "WillNotFit" in tail or "will not fit" in tail:
        line = next((ln for ln in reversed(tail.splitlines()) if "fit" in ln), "")
        return "pre-flight: " + line.strip()[:300]
    if "out of memory" in res.get("error", ""):
        return res["error"]
    last = [ln for ln in tail.splitlines() if ln.strip()]
    return f"{res.get('error')}: {last[-1][:300] if last else ''}"


def main(argv=None) -> int:
    a = parse(argv)
    archs = sorted(a.archs, key=lambda n: list(tt.ARCHS).index(n))
    tmp = Path(tempfile.mkdtemp(prefix="bench-largest-"))
    rows, detail = [], []
    for name in a.contenders:
        best, fail = None, None
        for arch in archs:
            targs = tt.parse(
                [
                    "--steps", "2", "--batch-size", "1", "--cutoff-len", str(a.cutoff_len),
                    "--threads", str(a.threads), "--max-mem-gb", str(a.max_mem_gb), "--model", arch,
                ]
            )  # fmt: skip
            targs.model_path = tt.model_path(arch)
            print(f"{name} on {arch} (load {os.getloadavg()[0]:.2f}) ...", flush=True)
            res = tt.run_child(name, targs, tmp / f"{name}-{arch}.json")
            res.update(arch=arch, loadavg_before=os.getloadavg())
            detail.append(res)
            if "error" in res:
                fail = (arch, why(res))
                print(f"  failed: {fail[1]}", flush=True)
                break
            best = res
            print(
                f"  trained: peak RSS {res['peak_rss_mb']:.0f} MB (anonymous {res['peak_anon_mb']:.0f} MB), "
                f"{res['s_per_step']:.1f} s/step",
                flush=True,
            )
        rows.append((name, best, fail))
    print(f"\n{'contender':<20}{'largest trained':<16}{'peak RSS MB':>12}{'anon MB':>9}  next size")
    for name, best, fail in rows:
        nxt = f"{fail[0]}: {fail[1]}" if fail else "(all sizes trained)"
        rss, anon = (best["peak_rss_mb"], best["peak_anon_mb"]) if best else (0, 0)
        print(f"{name:<20}{best['arch'] if best else '-':<16}{rss:>12.0f}{anon:>9.0f}  {nxt}")
    out = Path(a.out) if a.out else HERE / "results" / f"largest-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": tt.machine(), "args": vars(a), "results": detail}, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
