#!/usr/bin/env python3
"""Writes models/attnprobe-mini/eval.txt: held-out evaluation text.

tools/train_mini.py shuffled its documents with the training seed and held
out the first 5%; this reproduces that split from the same folders (in the
same order) and keeps the held-out documents of the MIT-licensed sources
(the Brown corpus and nlp-corpus), in held-out order, until --size bytes.
None of them was seen in training. It checks that the split is the one the
model was trained with: the first held-out document of 300+ characters must
be the first document of the model's sample.txt.

    python3 tools/eval_text.py --text DATA/text --text EXTRA --out models/attnprobe-mini
"""
import argparse
import glob
import os
import random

MIT_SOURCES = {"brown.txt", "nlp-corpus.txt"}


def read_documents(folders):
    docs, sources = [], []
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "*.txt"))):
            with open(path, encoding="utf-8", errors="replace") as f:
                found = [d.strip() for d in f.read().split("\n\n") if d.strip()]
            docs.extend(found)
            sources.extend([os.path.basename(path)] * len(found))
    return docs, sources


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", action="append", required=True, help="as given to train_mini.py, in order")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--size", type=int, default=400_000)
    args = ap.parse_args()
    docs, sources = read_documents(args.text)
    order = list(range(len(docs)))
    random.Random(args.seed).shuffle(order)  # the permutation train_mini.py applied to its list
    held_out = order[: max(1, len(docs) // 20)]
    first_long = next(docs[i] for i in held_out if len(docs[i]) >= 300)
    with open(os.path.join(args.out, "sample.txt"), encoding="utf-8") as f:
        if f.read().split("\n\n")[0].strip() != first_long:
            raise SystemExit("the split differs from the model's: give the training folders, in order")
    kept, size = [], 0
    for i in held_out:
        if sources[i] in MIT_SOURCES and len(docs[i]) >= 200:
            kept.append(docs[i])
            size += len(docs[i]) + 2
            if size >= args.size:
                break
    with open(os.path.join(args.out, "eval.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(kept) + "\n")
    print(f"{len(docs)} documents, {len(held_out)} held out; eval.txt: {len(kept)} documents, {size} bytes")


if __name__ == "__main__":
    main()
