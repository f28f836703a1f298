#!/bin/bash
# Pretraining launcher in the shape of the big LM repos' examples (continuation lines, data files named .txt)
set -euo pipefail
CHECKPOINT_PATH=/scratch/ckpt/gpt-1.3b
VOCAB_FILE=/scratch/data/gpt2-vocab.json
MERGE_FILE=gpt2-merges.txt
DATA_PATH=/scratch/data/my-gpt2_text_document
DICT=checkpoints/dict.txt
export CUDA_DEVICE_MAX_CONNECTIONS=1

torchrun --nproc_per_node 8 --nnodes $SLURM_NNODES \
    --master_addr $MASTER_ADDR --master_port 6000 \
    pretrain_gpt.py \
    --tensor-model-parallel-size 2 \
    --vocab-file $VOCAB_FILE \
    --merge-file $MERGE_FILE \
    --processed_file ${DATA_FOLDER}/train_processed.txt \
    --save $CHECKPOINT_PATH \
    --load $CHECKPOINT_PATH   # resume when a checkpoint is there
echo "[perf] ISL=$NUM_INPUT_TOKENS  OSL=$NUM_OUTPUT_TOKENS"
