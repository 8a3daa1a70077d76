#!/bin/bash
cd /tmp
PY=/work/main/.venv/bin/python
NEW="/work/main:$(ls -d /work/main/*/src | tr '\n' ':')"
OLD="/tmp/wt_base:$(ls -d /tmp/wt_base/*/src | tr '\n' ':')"
for round in 1 2; do
  for side in new old; do
    if [ $side = new ]; then PP=$NEW; else PP=$OLD; fi
    echo "== $side round $round"
    PYTHONPATH=$PP $PY -m lightvllm.cli bench throughput --num-prompts 64 --input-len 128 --output-len 128 --workload B5 --out /tmp/b4ab/b5_${side}_$round.json 2>&1 | grep -E "^\| B5|output_tok_s"
  done
done
echo done
