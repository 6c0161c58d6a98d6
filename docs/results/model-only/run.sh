#!/bin/sh
# PAC-Net from the source model alone: what Allocate keeps of the source, and what the
# target gets, when Allocate trains on the labelled source task, on the source's inputs
# without labels, on the target's inputs, or not at all; with magnitude and activation-aware
# masks; against fine-tuning from the same source. 5 paired seeds per benchmark.
#   sh docs/results/model-only/run.sh            (from the repository root)
set -e
DB=${DB:-runs/model-only.sqlite}
for bench in "friedman --target-sizes 20" "pde --quick --target-sizes 20" \
             "fashion --quick --width 0.25 --target-sizes 10"; do
  set -- $bench
  pacnet reproduce "$@" --methods finetune --seeds 5 --db "$DB" --out "runs/model-only/$1"
  for on in labelled source-inputs target-inputs none; do
    for score in magnitude activation; do
      pacnet reproduce "$@" --methods pacnet --seeds 5 --db "$DB" \
        --param pacnet.allocate_on=$on --param pacnet.prune_score=$score \
        --out "runs/model-only/$1"
    done
  done
done
pacnet report --db "$DB" --out docs/results/model-only
