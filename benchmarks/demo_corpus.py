"""What each collection of the demo corpus costs to export and what it holds.

Exports every ``--every``-th piece of each collection in this one process (no worker pool) and
prints, per collection: pieces in the collection, pieces timed, skipped, CPU seconds, notes, notes
per CPU second, the CPU seconds the whole collection should take at that rate, and tokens per note
(midigen's codec on the exported bytes). CPU time, not wall time: on a shared machine wall time
mostly measures the neighbours. The first export runs these in parallel workers, so its wall time
on N idle cores is about the total CPU over N, plus a second or two to start each worker.

    python benchmarks/demo_corpus.py [--every 4] [--collections chorale,quartet]
"""
from __future__ import annotations

import argparse
import time
import warnings


def measure(collection: str, paths: list[str], root, codec) -> dict:
    from midigen.data.ensembles import SkipPiece, export_piece

    cpu, notes, tokens, skipped = 0.0, 0, 0, 0
    for path in paths:
        t = time.process_time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = export_piece(root, collection, path)
        except SkipPiece:
            skipped += 1
            cpu += time.process_time() - t
            continue
        cpu += time.process_time() - t
        ids = codec.encode(data)
        notes += codec.count_notes(ids)
        tokens += len(ids)
    return {"cpu": cpu, "notes": notes, "tokens": tokens, "skipped": skipped}


def main() -> None:
    from midigen.music.codec import Codec
    from midigen.data.corpus import music21_corpus_root
    from midigen.data.ensembles import COLLECTIONS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=4, help="time every Nth piece of each collection")
    ap.add_argument("--collections", default=",".join(COLLECTIONS))
    args = ap.parse_args()
    root, codec = music21_corpus_root(), Codec()
    import music21  # noqa: F401  (imported once here so no collection pays for it)

    print(f"{'collection':17} {'pieces':>6} {'timed':>5} {'skip':>4} {'cpu_s':>7} {'notes':>7} "
          f"{'notes/cpu_s':>11} {'est_cpu_s':>9} {'est_notes':>9} {'tok/note':>8}")
    total_cpu = total_notes = 0.0
    for name in args.collections.split(","):
        paths = COLLECTIONS[name].files(root)
        sample = paths[:: args.every]
        m = measure(name, sample, root, codec)
        scale = len(paths) / max(1, len(sample))
        rate = m["notes"] / max(m["cpu"], 1e-9)
        total_cpu += m["cpu"] * scale
        total_notes += m["notes"] * scale
        print(f"{name:17} {len(paths):6d} {len(sample):5d} {m['skipped']:4d} {m['cpu']:7.1f} {m['notes']:7d} "
              f"{rate:11.0f} {m['cpu'] * scale:9.0f} {m['notes'] * scale:9.0f} "
              f"{m['tokens'] / max(1, m['notes']):8.2f}")
    print(f"{'all':17} {'':6} {'':5} {'':4} {'':7} {'':7} {total_notes / total_cpu:11.0f} "
          f"{total_cpu:9.0f} {total_notes:9.0f}")
    print(f"estimated first export: {total_cpu / 2:.0f} s of wall time on 2 idle cores (CPU / 2)")


if __name__ == "__main__":
    main()
