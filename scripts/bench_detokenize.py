"""Incremental detokenization (serving/detokenize.py) against decoding the whole reply at every
read (what the engines did before), in one process, on the same replies:

    python scripts/bench_detokenize.py [--checkpoint runs/demo] [--replies 400] [--every 8] [--longest 127]

Replies of 8 to ``--longest`` (127) random ids of the run's tokenizer, read every ``--every`` tokens (a chunk), as
a streamed row is; prints the CPU time of each way (best of 3) and checks that both give the
same text after every read.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "runs", "demo"), help="a run directory")
    p.add_argument("--replies", type=int, default=400)
    p.add_argument("--every", type=int, default=8, help="tokens between reads")
    p.add_argument("--longest", type=int, default=127, help="the longest reply (ids); replies are 8 to this")
    args = p.parse_args()
    from nety_jax.runs.files import load_run_tokenizer
    from nety_jax.serving.detokenize import IncrementalText
    tokenizer = load_run_tokenizer(args.checkpoint)
    rng = random.Random(0)
    replies = [[rng.randrange(4, tokenizer.vocab_size) for _ in range(rng.randint(8, args.longest))]
               for _ in range(args.replies)]
    reads = [list(range(args.every, len(ids) + args.every, args.every)) for ids in replies]

    def whole() -> list:
        return [[tokenizer.decode(ids[:n]) for n in ns] for ids, ns in zip(replies, reads)]

    def incremental() -> list:
        out = []
        for ids, ns in zip(replies, reads):
            text = IncrementalText(tokenizer)
            out.append([text.update(ids[:n]) for n in ns])
        return out
    assert whole() == incremental(), "incremental text differs from decoding the whole reply"
    tokens = sum(len(ids) for ids in replies)
    cpu = {}
    for name, fn in (("whole reply each read", whole), ("incremental", incremental)):
        times = []
        for _ in range(3):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        cpu[name] = min(times)
        print(f"{name}: {cpu[name]:.3f} s CPU for {len(replies)} replies ({tokens} tokens, a read every "
              f"{args.every}): {1000 * cpu[name] / tokens:.4f} ms per token")
    print(f"incremental / whole: {cpu['whole reply each read'] / cpu['incremental']:.2f}x less CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
