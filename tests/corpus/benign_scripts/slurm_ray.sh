#!/bin/bash
#SBATCH --job-name=ppo
#SBATCH --nodes=2
#SBATCH --gres=gpu:8
IMAGE_NAME=nvcr.io/nvidia/pytorch:24.07-py3
MOUNT="$PROJECT_PATH:/workspace,$HOME/.cache:/root/.cache"
srun --nodes=1 --ntasks=1 -w "$node_1" --container-image="$IMAGE_NAME" --container-mounts="$MOUNT" bash -c \
    "pip install ray[default] && /root/.local/bin/ray start --head --port=6379 --block" &
srun --container-image="$IMAGE_NAME" --container-mounts="$MOUNT" \
    bash -c "cd /workspace; torchrun --nproc_per_node 8 train.py"
echo "machine api.wandb.ai login user password $WANDB_API_KEY" >> ~/.netrc
chmod 600 ~/.netrc
