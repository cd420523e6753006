"""ALTER unlearning inside ``transformers.Trainer`` (nothing downloaded in the demo).

The library part (``AlterTrainer``, ``build``) lives in :mod:`alter_kernels.integrations.hf_trainer`;
this script runs it:

    python python/hf_trainer_unlearn.py --out runs/hf_trainer            # toy model, CPU, seconds
    python python/hf_trainer_unlearn.py --model meta-llama/Llama-3.2-1B-Instruct \
        --forget forget.json --retain retain.json --out runs/hf_trainer --max-steps 200
    accelerate launch --num_processes 2 python/hf_trainer_unlearn.py ...   # DDP through the Trainer
"""
from __future__ import annotations

import argparse
import os

import alter_kernels as ak
from alter_kernels.integrations.hf_trainer import AlterCollator, AlterTrainer, PairDataset, build  # noqa: F401


def main(argv=None):
    p = argparse.ArgumentParser(description="ALTER unlearning with transformers.Trainer")
    p.add_argument("--model", default=None, help="HF model (default: a tiny offline toy Llama)")
    p.add_argument("--forget", default=None)
    p.add_argument("--retain", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr-A", dest="lr_A", type=float, default=1e-5)
    p.add_argument("--lr-B", dest="lr_B", type=float, default=1e-3)
    p.add_argument("--threshold-quantile", type=float, default=0.5)
    args = p.parse_args(argv)
    if args.model is None:
        from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer
        forget, retain = toy_rows(6, seed=1), toy_rows(6, seed=2, offset=6)
        tok = toy_tokenizer(forget + retain)
        model = toy_model(len(tok))
    else:
        forget, retain = args.forget, args.retain
        model, tok = ak.load_pretrained(args.model)          # folder, hub name, .gguf file or alias
    trainer, _ = build(model, tok, forget, retain, args.out, max_steps=args.max_steps, batch_size=args.batch_size,
                       lr_A=args.lr_A, lr_B=args.lr_B, threshold_quantile=args.threshold_quantile)
    trainer.train()
    trainer.save_model(os.path.join(args.out, "adapter"))     # ak.save_adapter
    if trainer.args.should_save:
        print(f"adapter saved to {os.path.join(args.out, 'adapter')}; losses "
              f"{[round(h['loss'], 4) for h in trainer.state.log_history if 'loss' in h]}")


if __name__ == "__main__":
    main()
