#!/bin/bash
# alternate: this session's server vs the session start's (5c18942), the current client for both
cd /tmp
PY=/work/main/.venv/bin/python
NEW="/work/main:$(ls -d /work/main/*/src | tr '\n' ':')"
OLD="/tmp/wt_base:$(ls -d /tmp/wt_base/*/src | tr '\n' ':')"
CLIENT="$NEW"
for round in 1 2; do
  for side in new old; do
    if [ $side = new ]; then PP=$NEW; else PP=$OLD; fi
    PORT=8790
    PYTHONPATH=$PP $PY -m lightvllm.cli serve --port $PORT --dtype float32 --max-num-seqs 64 --max-model-len 1024 > /tmp/b4ab/server_${side}_$round.log 2>&1 &
    SPID=$!
    for i in $(seq 1 120); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 1; done
    echo "== $side round $round (server pid $SPID)"
    PYTHONPATH=$CLIENT $PY -m lightvllm.cli bench serve --base-url http://127.0.0.1:$PORT --num-prompts 64 --input-len 128 --output-len 32 --request-rate 1 4 inf --workload B4-cpu-small --out /tmp/b4ab/${side}_$round.json 2>&1 | grep -E "^rate|engine steps"
    kill -INT $SPID; wait $SPID
  done
done
echo done
