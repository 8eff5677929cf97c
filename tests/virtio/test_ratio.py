#!/usr/bin/env python3
"""Checks ratio.py, which gives the virtio bench its verdicts: run by `make host-tests`."""
import os
import subprocess
import sys
import unittest

RATIO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ratio.py")


def run(a, b):
    p = subprocess.run([sys.executable, RATIO, a, b], capture_output=True, text=True)
    return p.returncode, p.stdout.strip(), p.stderr.strip()


class Ratio(unittest.TestCase):
    def test_clearly_faster_is_above(self):
        self.assertEqual(run("148 150 152 149 151", "133 134 135 136 137"),
                         (0, "1.11 (90%: 1.09-1.13, above)", ""))

    def test_clearly_slower_is_below(self):
        rc, out, _ = run("70 71 72 69 70 71", "90 91 89 92 90 91")
        self.assertEqual(rc, 0)
        self.assertTrue(out.startswith("0.78 ") and out.endswith(", below)"), out)

    def test_overlapping_samples_are_on_par(self):
        rc, out, _ = run("60 90 70 85 65 88 75", "62 91 72 84 66 86 77")
        self.assertEqual(rc, 0)
        self.assertTrue(out.endswith(", on par)"), out)

    def test_lower_median_of_an_even_count(self):
        # medians 2 and 4 (nearest rank, the lower middle one), as the bench prints them
        self.assertTrue(run("1 2 3 4", "3 4 5 6")[1].startswith("0.50 "))

    def test_missing_side_is_na(self):
        self.assertEqual(run("", "1 2")[:2], (0, "n/a"))
        self.assertEqual(run("5", "0")[:2], (0, "n/a"))

    def test_bad_sample_is_named(self):
        rc, _, err = run("1 x", "2")
        self.assertNotEqual(rc, 0)
        self.assertIn("'x'", err)


if __name__ == "__main__":
    unittest.main()
