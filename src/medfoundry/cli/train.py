"""``medfoundry train ...``: build training pairs and train models with medfoundry's own loops."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or adapt models (contrastive CLIP, ...)")
    tsub = p.add_subparsers(dest="train_command", metavar="WHAT")
    tsub.required = True

    pp = tsub.add_parser("clip-pairs", help="build image-text pairs from the project's shared data folder")
    pp.add_argument("--shared", required=True, help="the shared data folder (with INDEX.md)")
    pp.add_argument("--out", required=True, help="output folder for pairs.csv and derived PNGs")
    pp.add_argument("--seed", type=int, default=0)
    pp.set_defaults(func=run_pairs)

    pc = tsub.add_parser("clip", help="contrastive training of a dual encoder on a pairs CSV (image,text[,label])")
    pc.add_argument("--pairs", required=True, help="CSV with columns image,text and optional label,split,source")
    pc.add_argument("--out", required=True, help="run folder: checkpoints, logs and the final model/ folder")
    pc.add_argument("--config", default=None,
                    help="JSON file of training settings (fields of ClipTrainConfig, e.g. the train_config.json "
                         "written beside a model); flags given on the command line override it")
    pc.add_argument("--epochs", type=int, default=None, help="default 8")
    pc.add_argument("--batch-size", type=int, default=None, help="per process; default 64")
    pc.add_argument("--lr", type=float, default=None, help="default 1e-3")
    pc.add_argument("--label-weight", type=float, default=None,
                    help="MedCLIP-style soft targets: weight of same-label partners (0 = plain CLIP; default 0.5)")
    pc.add_argument("--image-size", type=int, default=None, help="default 128")
    pc.add_argument("--backbone", default=None,
                    help="timm image backbone, built without pretrained weights (default resnet18)")
    pc.add_argument("--output-stride", type=int, default=None, help="default 16")
    pc.add_argument("--source-repeat", default=None,
                    help="per-source sampling rate per epoch, e.g. medpix=2,pneumoniamnist=0.5")
    pc.add_argument("--cpu-bf16", action="store_true", default=None,
                    help="bfloat16 autocast on the CPU (fast only with native bfloat16: AVX512-BF16 / AMX)")
    pc.add_argument("--seed", type=int, default=None)
    pc.add_argument("--device", default=None)
    pc.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="also write the resume point OUT/last.pt every N optimiser steps (default: at epoch ends)")
    pc.set_defaults(func=run_clip)

    pl = tsub.add_parser("clip-lora", help="LoRA (peft) fine-tuning of the image and/or text tower of any "
                         "contrastive model on a pairs CSV; writes the merged model in its own format")
    pl.add_argument("--model", required=True, help="registry name or local-dir:PATH (open_clip, OpenAI, HF, own)")
    pl.add_argument("--weights", default=None)
    pl.add_argument("--pairs", required=True, help="CSV with columns image,text and optional label,split")
    pl.add_argument("--out", required=True, help="run folder; the merged model goes to OUT/model")
    pl.add_argument("--tower", choices=["image", "text", "both"], default="both")
    pl.add_argument("--rank", type=int, default=8)
    pl.add_argument("--alpha", type=int, default=16)
    pl.add_argument("--epochs", type=int, default=3)
    pl.add_argument("--batch-size", type=int, default=32)
    pl.add_argument("--lr", type=float, default=5e-4)
    pl.add_argument("--label-weight", type=float, default=0.0)
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="also write the resume point OUT/last.pt every N optimiser steps (default: at epoch ends)")
    pl.set_defaults(func=run_clip_lora)

    pr = tsub.add_parser("probe", help="linear probe or few-shot prototypes on frozen contrastive embeddings")
    pr.add_argument("--data", required=True, help="CSV with columns image,label")
    pr.add_argument("--model", default="medfoundry-clip-tiny")
    pr.add_argument("--weights", default=None)
    pr.add_argument("--kind", choices=["linear", "prototype"], default="linear")
    pr.add_argument("--out", required=True, help="probe JSON (use with `classify --probe`)")
    pr.add_argument("--overwrite", action="store_true")
    pr.set_defaults(func=run_probe)

    pm = tsub.add_parser("sam-manifest", help="build the segmentation manifest of the shared data folder")
    pm.add_argument("--shared", required=True)
    pm.add_argument("--out", required=True, help="manifest .jsonl (paths stored relative to it)")
    pm.set_defaults(func=run_sam_manifest)

    ps = tsub.add_parser("sam", help="train/fine-tune a promptable segmenter with simulated box and click prompts")
    src = ps.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="JSON-lines manifest of image/mask rows")
    src.add_argument("--images", help="folder of images (masks with the same names in --masks)")
    ps.add_argument("--masks", help="folder of masks, for --images")
    ps.add_argument("--out", required=True)
    ps.add_argument("--mode", choices=["full", "decoder", "lora"], default="full",
                    help="full training, decoder only (MedSAM-style), or LoRA adapters in the encoder")
    ps.add_argument("--init", default=None,
                    help="start from these weights: a file or checkpoint folder of this architecture, or a SAM-family "
                         "model (registry name such as litemedsam, or local-dir:PATH) whose architecture is then "
                         "fine-tuned on box crops")
    ps.add_argument("--epochs", type=int, default=40)
    ps.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    ps.add_argument("--time-schedule", action="store_true",
                    help="with --max-minutes: decay the learning rate to 0 by the end of the time budget")
    ps.add_argument("--batch-size", type=int, default=32)
    ps.add_argument("--lr", type=float, default=1e-3)
    ps.add_argument("--backbone", default="resnet10t")
    ps.add_argument("--embed-pool", type=int, default=1,
                    help="lite encoder: pool the 64×64 embedding by this factor (2 → 32×32, faster prompts)")
    ps.add_argument("--pool-mix", default=None,
                    help="lite encoders: alternate these embedding pools between steps (e.g. 1,2) so the weights "
                         "serve both the default and the --fast-prompts grid; validation reports each")
    ps.add_argument("--workers", type=int, default=0)
    ps.add_argument("--steps-per-epoch", type=int, default=None)
    ps.add_argument("--seed", type=int, default=0)
    ps.add_argument("--device", default="auto")
    ps.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="also write the resume point OUT/last.pt every N optimiser steps (default: at epoch ends)")
    ps.set_defaults(func=run_sam)

    pv = tsub.add_parser("sam-propagation", help="train the slice-propagation head of a box-crop segmenter on "
                         "label-map volumes (3D propagation that shrinks with the object and stops where it ends)")
    vsrc = pv.add_mutually_exclusive_group(required=True)
    vsrc.add_argument("--volumes", help="JSON-lines manifest: image, mask (label-map volume), optional image_key, "
                      "mask_key, labels, flip_y, split, source")
    vsrc.add_argument("--shared", help="build the manifest from the shared data folder (written to OUT)")
    pv.add_argument("--model", default="medfoundry-sam-lite",
                    help="the box-crop segmenter to extend (registry name or local-dir:PATH); its encoder and "
                         "first decoder stay frozen")
    pv.add_argument("--weights", default=None, help="weights for --model (default: the model's own)")
    pv.add_argument("--out", required=True)
    pv.add_argument("--epochs", type=int, default=12)
    pv.add_argument("--steps-per-epoch", type=int, default=60)
    pv.add_argument("--batch-size", type=int, default=16)
    pv.add_argument("--lr", type=float, default=2e-4)
    pv.add_argument("--max-gap-mm", type=float, default=6.0,
                    help="train steps of up to this many mm between slices (thin slices teach thick steps)")
    pv.add_argument("--max-minutes", type=float, default=None)
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--device", default="auto")
    pv.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="also write the resume point OUT/last.pt every N optimiser steps (default: at epoch ends)")
    pv.set_defaults(func=run_sam_propagation)

    pb = tsub.add_parser("box3d", help="train a Box3DNet: one box on a key slice -> the object's 3D mask in one "
                         "pass (the 3D alternative to slice-by-slice propagation)")
    bsrc = pb.add_mutually_exclusive_group(required=True)
    bsrc.add_argument("--volumes", help="JSON-lines manifest: image, mask (label-map volume), optional image_key, "
                      "mask_key, units (HU), labels, split (train/val), source, name")
    bsrc.add_argument("--shared", help="build the manifest from the shared data folder (written to OUT): STS tune "
                      "patients, DeepLesion 000001/000002, TotalSegmentator example organs")
    pb.add_argument("--val-patients", type=int, default=2, metavar="N",
                    help="with --shared: the last N STS tune patients validate instead of training (0: train on all "
                    "12, the final fit once the recipe is chosen)")
    pb.add_argument("--out", required=True)
    pb.add_argument("--epochs", type=int, default=20)
    pb.add_argument("--steps-per-epoch", type=int, default=50)
    pb.add_argument("--batch-size", type=int, default=4)
    pb.add_argument("--lr", type=float, default=2e-3)
    pb.add_argument("--max-minutes", type=float, default=None)
    pb.add_argument("--seed", type=int, default=0)
    pb.add_argument("--device", default="auto")
    pb.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA, or CPUs with native bf16)")
    pb.add_argument("--padding", choices=["border", "reflection"], default="border",
                    help="the patch beyond the volume's ends: the end slice repeated (default), or mirrored")
    pb.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="also write the resume point OUT/last.pt every N optimiser steps (default: at epoch ends)")
    pb.set_defaults(func=run_box3d)

    from medfoundry.cli.train_captioner import add_parser as add_captioner_parser

    add_captioner_parser(tsub)


def run_pairs(args: argparse.Namespace) -> int:
    from medfoundry.datasets.pairs import build_shared_pairs

    path = build_shared_pairs(args.shared, args.out, seed=args.seed)
    print(f"wrote {path}")
    print((Path(args.out) / "pairs_summary.json").read_text())
    return 0


def clip_config(args: argparse.Namespace) -> Any:
    """The ClipTrainConfig of ``train clip``: defaults, then ``--config``, then the flags given."""
    from dataclasses import fields

    from medfoundry.errors import InputContractError
    from medfoundry.train.clip import ClipTrainConfig

    settings: dict[str, Any] = {}
    if args.config:
        try:
            settings = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputContractError(f"--config {args.config}: {exc}") from exc
        unknown = sorted(set(settings) - {f.name for f in fields(ClipTrainConfig)})
        if unknown:
            raise InputContractError(f"--config {args.config}: unknown settings {unknown}")
    settings.update(pairs=args.pairs, out=args.out)
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("label_weight", "label_weight"), ("seed", "seed"), ("device", "device"),
                      ("cpu_bf16", "cpu_bf16"), ("checkpoint_every", "checkpoint_every")):
        if getattr(args, flag) is not None:
            settings[key] = getattr(args, flag)
    if args.source_repeat:
        try:
            settings["source_repeat"] = {k.strip(): float(v) for k, v in
                                         (item.split("=") for item in args.source_repeat.split(","))}
        except ValueError as exc:
            raise InputContractError(f"--source-repeat wants source=rate,...: {args.source_repeat!r}") from exc
    cfg = ClipTrainConfig(**settings)
    for flag, key in (("backbone", "image_backbone"), ("image_size", "image_size"),
                      ("output_stride", "output_stride")):
        if getattr(args, flag) is not None:
            cfg.arch[key] = getattr(args, flag)
    if args.image_size is not None:
        cfg.contract["image_size"] = args.image_size
    if not args.config:  # the defaults of `train clip` before config files: 8 epochs, 128 px, batch 64
        cfg.epochs = args.epochs or 8
        cfg.batch_size = args.batch_size or 64
        cfg.arch.setdefault("output_stride", 16)
        if args.image_size is None:
            cfg.arch["image_size"] = cfg.contract["image_size"] = 128
    return cfg


def run_clip(args: argparse.Namespace) -> int:
    from medfoundry.train.clip import train_clip

    cfg = clip_config(args)
    print(json.dumps({"resolved_config": cfg.__dict__}, default=str))
    folder = train_clip(cfg)
    print(f"model written to {folder}")
    return 0


def run_sam_manifest(args: argparse.Namespace) -> int:
    from medfoundry.datasets.segmentation import shared_manifest

    path = shared_manifest(args.shared, args.out)
    print(f"wrote {path} ({len(path.read_text().splitlines())} objects)")
    return 0


def run_sam(args: argparse.Namespace) -> int:
    from medfoundry.errors import InputContractError
    from medfoundry.train.sam import SamTrainConfig, resolve_init, train_sam
    from medfoundry.train.seg_data import folder_manifest

    manifest = args.manifest
    if args.images:
        if not args.masks:
            raise InputContractError("--images needs --masks")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        manifest = str(folder_manifest(args.images, args.masks, Path(args.out) / "manifest.jsonl", seed=args.seed))
    cfg = SamTrainConfig(manifest=manifest, out=args.out, epochs=args.epochs, max_minutes=args.max_minutes,
                         batch_size=args.batch_size, lr=args.lr, mode=args.mode, seed=args.seed, device=args.device,
                         workers=args.workers, init=args.init, steps_per_epoch=args.steps_per_epoch,
                         time_schedule=args.time_schedule, checkpoint_every=args.checkpoint_every)
    cfg.arch["backbone"] = args.backbone
    if args.pool_mix:
        cfg.pool_mix = tuple(int(v) for v in args.pool_mix.split(","))
    if args.embed_pool != 1:
        cfg.arch.update(embed_pool=args.embed_pool, embed_stride=4 * args.embed_pool)
    resolve_init(cfg)  # --init MODEL sets the architecture: print what will be trained
    print(json.dumps({"resolved_config": cfg.__dict__}, default=str))
    print(f"model written to {train_sam(cfg)}")
    return 0


def run_sam_propagation(args: argparse.Namespace) -> int:
    from medfoundry.registry.loading import fetch_weights
    from medfoundry.train.sam_propagation import PropagationConfig, shared_volume_manifest, train_propagation

    volumes = args.volumes
    if args.shared:
        volumes = str(shared_volume_manifest(args.shared, Path(args.out) / "volumes.jsonl"))
    record, init = fetch_weights(args.model, args.weights)
    cfg = PropagationConfig(volumes=volumes, init=str(init), out=args.out, epochs=args.epochs,
                            steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
                            max_gap_mm=args.max_gap_mm, max_minutes=args.max_minutes, seed=args.seed,
                            device=args.device, checkpoint_every=args.checkpoint_every)
    print(json.dumps({"resolved_config": cfg.__dict__}, default=str))
    print(f"model written to {train_propagation(cfg, base=record)}")
    return 0


def run_box3d(args: argparse.Namespace) -> int:
    from medfoundry.train.box3d import Box3DTrainConfig, shared_box3d_manifest, train_box3d

    volumes = args.volumes
    if args.shared:
        volumes = str(shared_box3d_manifest(args.shared, Path(args.out) / "volumes.jsonl", args.val_patients))
    cfg = Box3DTrainConfig(volumes=volumes, out=args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                           batch_size=args.batch_size, lr=args.lr, max_minutes=args.max_minutes, seed=args.seed,
                           device=args.device, bf16=args.bf16, checkpoint_every=args.checkpoint_every,
                           contract={"padding": args.padding})
    print(json.dumps({"resolved_config": cfg.__dict__}, default=str))
    print(f"model written to {train_box3d(cfg)}")
    return 0


def run_clip_lora(args: argparse.Namespace) -> int:
    from medfoundry.train.clip_lora import ClipLoraConfig, finetune_clip_lora

    cfg = ClipLoraConfig(model=args.model, weights=args.weights, pairs=args.pairs, out=args.out, tower=args.tower,
                         rank=args.rank, alpha=args.alpha, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, label_weight=args.label_weight, seed=args.seed,
                         checkpoint_every=args.checkpoint_every)
    folder = finetune_clip_lora(cfg, progress=sys.stderr.isatty())
    print(f"wrote {folder} (use --model local-dir:{folder})")
    return 0


def run_probe(args: argparse.Namespace) -> int:
    from medfoundry.cli.contrastive import _images, read_labelled_csv
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.probe import fit_linear_probe, fit_prototypes

    paths, labels = read_labelled_csv(args.data)
    predictor = open_contrastive(args.model, args.weights)
    emb = predictor.embed_images(_images(paths, None), progress=True)
    fit = fit_linear_probe if args.kind == "linear" else fit_prototypes
    head = fit(predictor.record.name, emb, labels)
    head.save(args.out, args.overwrite)
    print(f"wrote {args.out}: {args.kind} head over {len(head.classes)} classes from {len(paths)} images")
    return 0
