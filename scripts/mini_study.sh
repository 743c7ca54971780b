#!/usr/bin/env bash
# Mini study of label-free uncertainty filtering on PerturbQA; writes results/mini_study.{md,json}.
#   scripts/mini_study.sh            embedded SmolLM2-135M served by llama-server (K562 + RPE1 test questions)
#   scripts/mini_study.sh --local    the same with the in-process transformers backend (slow)
#   TGI_URL=http://host:8080 scripts/mini_study.sh --tgi    at scale, with recipes/perturbqa.yaml's teacher
# See scripts/mini_study.py --help. Resumable: rerun the same command after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/mini_study.py "$@"
