#!/usr/bin/env bash
# The main job on the embedded default dataset; run it with `make demo`.
#   1. write the synthetic COCO dataset, print its statistics
#   2. train Mask R-CNN (experiment=synth_cpu: ResNet-18-FPN from scratch, at most 14 minutes on a CPU)
#   3. compare the best checkpoint with the classical baselines: leaderboard, plots, HTML report
# Extra arguments are passed to `segbench train` (e.g. trainer.max_time=00:00:05:00).
set -euo pipefail
cd "$(dirname "$0")/.."
SB=.venv/bin/segbench
$SB data synth out=data/synth
$SB data stats data.root=data/synth
$SB train experiment=synth_cpu data.root=data/synth "$@"
RUN=$(ls -d outputs/train/synth_cpu/*/ | sort | tail -n 1)
CKPT=$(.venv/bin/python -c "import json,sys; m=json.load(open(sys.argv[1])); print(m.get('best_checkpoint') or m['last_checkpoint'])" "$RUN/metrics.json")
OUT=outputs/demo/compare_$(date +%Y-%m-%d_%H-%M-%S)
$SB compare data.root=data/synth ckpt_path="$CKPT" out="$OUT" label_errors=true
echo
echo "demo done. Training run: $RUN"
echo "Comparison report: $(cd "$OUT" && pwd)/report.html"
