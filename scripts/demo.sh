#!/usr/bin/env bash
# The main job on the embedded default dataset. Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
SB=.venv/bin/segbench
$SB data synth out=data/synth
$SB data stats data.root=data/synth
