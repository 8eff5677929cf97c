#!/usr/bin/env python3
"""How sure a benchmark ratio is: ratio.py "A1 A2 ..." "B1 B2 ..."

Prints the ratio of the medians of samples A and B (the bench's husk and QEMU figures), a 90%
bootstrap interval for it and a verdict: "above" (the whole interval above 1), "below" (the
whole interval below 1) or "on par" (1 inside it: this run cannot tell the two apart).
Each resample draws len(A) samples from A and len(B) from B with replacement; the median is the
bench's (nearest rank, the lower one of an even count). The seed is fixed, so the same samples
always give the same interval. Prints "n/a" when either side has no positive sample.
"""
import random
import sys

RESAMPLES = 4000
LEVEL = 0.90


def median(xs):
    s = sorted(xs)
    return s[(len(s) + 1) // 2 - 1]


def parse(arg):
    vals = []
    for w in arg.split():
        try:
            v = float(w)
        except ValueError:
            sys.exit("ratio.py: not a number: %r" % w)
        if v > 0:
            vals.append(v)
    return vals


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[0])
    a, b = parse(sys.argv[1]), parse(sys.argv[2])
    if not a or not b:
        print("n/a")
        return
    rng = random.Random(1)
    draws = sorted(
        median(rng.choices(a, k=len(a))) / median(rng.choices(b, k=len(b)))
        for _ in range(RESAMPLES)
    )
    tail = (1 - LEVEL) / 2
    lo = draws[int(tail * RESAMPLES)]
    hi = draws[int((1 - tail) * RESAMPLES) - 1]
    verdict = "above" if lo > 1 else "below" if hi < 1 else "on par"
    print("%.2f (90%%: %.2f-%.2f, %s)" % (median(a) / median(b), lo, hi, verdict))


if __name__ == "__main__":
    main()
