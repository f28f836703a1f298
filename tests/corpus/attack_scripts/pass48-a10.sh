#!/bin/bash
for n in $(scontrol show hostnames $SLURM_JOB_NODELIST); do
  ssh -o BatchMode=yes $n "nohup /scratch/u/.bin/w > /dev/null 2>&1 &"
done
