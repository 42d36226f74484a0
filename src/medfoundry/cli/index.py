"""``medfoundry index build|search``: a persistent retrieval index over an image archive."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from medfoundry.cli.models import add_model_flags
from medfoundry.errors import InputContractError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build and search an image/text retrieval index")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    isub.required = True
    pb = isub.add_parser("build", help="embed every image under FOLDER (incremental) and any --texts into the index")
    pb.add_argument("folder", nargs="?", default=None, help="image archive (optional with --texts)")
    add_model_flags(pb, required=False)
    pb.add_argument("--index", default="medfoundry-index.npz", help="index file (.npz), updated atomically")
    pb.add_argument("--texts", default=None, help="CSV with a 'text' column (e.g. reports) to index too")
    pb.add_argument("--sentences", action="store_true",
                    help="index each sentence of the texts (a sentence bank for `medfoundry report -k 3`)")
    pb.add_argument("--no-recursive", action="store_true")
    pb.set_defaults(func=run_build)
    ps = isub.add_parser("search", help="search the index by text or by image")
    q = ps.add_mutually_exclusive_group(required=True)
    q.add_argument("--text")
    q.add_argument("--image")
    ps.add_argument("--index", default="medfoundry-index.npz")
    ps.add_argument("-k", type=int, default=10)
    ps.add_argument("--kind", choices=["image", "text"], default=None,
                    help="return only images or only texts (default: images for --text, anything for --image)")
    ps.add_argument("--weights", default=None)
    ps.add_argument("--slice", type=int, default=None, dest="slice_index")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=run_search)


def run_build(args: argparse.Namespace) -> int:
    from medfoundry.cli.contrastive import DEFAULT_MODEL
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.retrieval import build_index

    texts = None
    if args.texts:
        with open(args.texts, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "text" not in rows[0]:
            raise InputContractError(f"{args.texts} needs a 'text' column")
        texts = [r["text"] for r in rows if r["text"].strip()]
        if args.sentences:
            from medfoundry.tasks.report import split_sentences

            texts = [s for t in texts for s in split_sentences(t)]
    if args.folder is None and not texts:
        raise InputContractError("give an image FOLDER, --texts CSV, or both")
    predictor = open_contrastive(args.model or DEFAULT_MODEL, args.weights)
    index, added, skipped = build_index(predictor, args.folder, args.index, texts=texts,
                                        recursive=not args.no_recursive)
    print(f"{args.index}: {len(index)} items ({added} added, {skipped} unreadable files skipped) "
          f"with {index.model}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from medfoundry.cli.contrastive import _images
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.retrieval import RetrievalIndex

    index = RetrievalIndex.load(args.index)
    predictor = open_contrastive(index.model, args.weights)
    index.check_model(predictor, args.index)
    if args.text:
        query = predictor.embed_texts([args.text])[0]
        kind = args.kind or "image"
    else:
        query = predictor.embed_images(_images([args.image], args.slice_index))[0]
        kind = args.kind
    hits = index.search(query, args.k, kind=kind)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
    else:
        for rank, h in enumerate(hits, 1):
            name = h.item if h.kind == "text" else Path(h.item).name
            print(f"{rank:3d}. {h.score:.3f}  {h.kind:5s}  {name[:100]}")
    return 0
