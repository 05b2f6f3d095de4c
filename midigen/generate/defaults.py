"""Sampling defaults shared by the commands (sample, infill, arrange) and the studio's API and page."""

# Nucleus sampling by default: the cut tail is mostly rare, out-of-key notes. With it the demo model's
# samples meet every music-feature overlap with the real test pieces (the in-scale rate's goes from
# 0.55 at top-p 1 to 0.76 at 0.95; docs/benchmarks.md). ``--top-p 1`` turns it off.
TOP_P = 0.95
