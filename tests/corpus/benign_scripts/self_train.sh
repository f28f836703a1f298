#!/usr/bin/env bash
# Comments that hold brace lists, backticks and URLs are not commands
w2v_dir=  # features `{train,valid}.{npy,lengths}` and dict `dict.${label}.txt`
lab_dir=/scratch/labels   # see https://example.org/recipes/run.sh | the recipe
for split in train valid; do   # `{a,b}` again
  python prepare.py --split $split --out $lab_dir  # writes $lab_dir/{train,valid}.tsv
done
