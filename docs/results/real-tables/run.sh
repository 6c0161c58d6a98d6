#!/bin/sh
# Every method, each cross-validated (3 folds on the target training rows), on each real
# table of the tables family at 10, 20 and 50 target rows with 10 paired seeds; then one
# report with a section per table and a summary across them.
#   sh docs/results/real-tables/run.sh            (from the repository root)
set -e
DB=${DB:-runs/real-tables.sqlite}
for t in diamonds ames gapminder penguins schools wages computers galton; do
  pacnet reproduce "tables-$t" --config configs/tables.toml --db "$DB" --out "runs/real-tables/$t"
done
pacnet report --db "$DB" --out docs/results/real-tables
