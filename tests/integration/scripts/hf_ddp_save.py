"""A Hugging Face Trainer saving every 10 of 30 steps, with the gpuwatch callback (under
torchrun, gloo DDP on CPU: rank 0 writes the checkpoint, every rank its RNG state), or
without it (``--zero-code``: under ``gpuwatch run``).

    torchrun --nproc-per-node 2 hf_ddp_save.py OUT
    gpuwatch run --out OUT -- python hf_ddp_save.py OUT --zero-code
"""

import os
import sys
import warnings

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from gpuwatch.integrations.huggingface import GpuWatchCallback


def main() -> None:
    out, zero_code = sys.argv[1], "--zero-code" in sys.argv
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128,
                                       n_positions=32, bos_token_id=0, eos_token_id=0))
    dataset = [{"input_ids": t, "labels": t} for t in torch.randint(0, 128, (256, 32))]
    args = TrainingArguments(output_dir=out + "-hf", max_steps=30, save_steps=10,
                             per_device_train_batch_size=4, report_to=[], use_cpu=True,
                             disable_tqdm=True, logging_steps=100,
                             ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None)
    callbacks = [] if zero_code else [GpuWatchCallback(out_dir=out, exporter={"enabled": False})]
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks).train()


if __name__ == "__main__":
    main()
