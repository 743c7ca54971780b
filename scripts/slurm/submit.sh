#!/usr/bin/env bash
# Submit a sharded curate run to Slurm: an array of N shard jobs, then the merge once they all succeed.
#
#   scripts/slurm/submit.sh RECIPE RUN_DIR N [sbatch options for the shard jobs, e.g. --gres=gpu:1 --partition=gpu]
#
# Run it from the repository root. It prints the two job ids. What it runs:
#   sbatch --parsable --array=0-$((N-1)) --export=ALL,RECIPE=...,RUN_DIR=...,SHARDS=N [options] scripts/slurm/curate-array.sbatch
#   sbatch --parsable --dependency=afterok:ARRAY_JOB_ID --export=ALL,RECIPE=...,RUN_DIR=... scripts/slurm/curate-merge.sbatch
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 RECIPE RUN_DIR N [sbatch options for the shard jobs]" >&2
  exit 2
fi
recipe=$1 run_dir=$2 shards=$3
shift 3
here=$(dirname "$0")
array=$(sbatch --parsable --array=0-$((shards - 1)) --export="ALL,RECIPE=$recipe,RUN_DIR=$run_dir,SHARDS=$shards" "$@" "$here/curate-array.sbatch")
array=${array%%;*}  # --parsable prints "id" or "id;cluster"
merge=$(sbatch --parsable --dependency="afterok:$array" --export="ALL,RECIPE=$recipe,RUN_DIR=$run_dir" "$here/curate-merge.sbatch")
echo "shards: job $array (array 0-$((shards - 1)))   merge: job ${merge%%;*} (runs when every shard succeeded)"
