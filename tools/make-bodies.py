#!/usr/bin/env python3
"""Request bodies for tools/wrk-personer.lua: N bodies of B ids drawn at random (without
replacement within a body) from a JSONL export, one JSON body per line.

    python3 tools/make-bodies.py register.jsonl 3000 1000 > bodies.txt
"""
import json
import random
import sys

export, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = []
with open(export) as f:
    for line in f:
        # Every line starts with {"personidentifikator":"<11 digits>"
        ids.append(line[24:35])
random.seed(7)
for _ in range(count):
    print(json.dumps({"personidentifikatorer": random.sample(ids, size)}, separators=(",", ":")))
