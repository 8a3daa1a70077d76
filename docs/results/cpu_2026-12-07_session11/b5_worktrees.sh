#!/bin/bash
cd /tmp
PY=/work/main/.venv/bin/python
HEADP="/tmp/wt_head:$(ls -d /tmp/wt_head/*/src | tr '\n' ':')"
OLD="/tmp/wt_base:$(ls -d /tmp/wt_base/*/src | tr '\n' ':')"
for round in 1 2; do
  for side in head old; do
    if [ $side = head ]; then PP=$HEADP; else PP=$OLD; fi
    echo "== $side round $round"
    PYTHONPATH=$PP $PY -m lightvllm.cli bench throughput --num-prompts 64 --input-len 128 --output-len 128 --workload B5 --out /tmp/b4ab/b5aa_${side}_$round.json 2>&1 | grep -E "^\| B5"
  done
done
