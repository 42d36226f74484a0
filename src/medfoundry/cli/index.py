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
    pb.add_argument("--from-batch", default=None, metavar="DIR",
                    help="index the embeddings of a `medfoundry batch embed --out DIR` job (its Parquet shards) into "
                         "a sharded index folder --index (the model is the batch job's)")
    pb.add_argument("--kind", choices=["exact", "hnsw", "ivfpq"], default="exact",
                    help="with --from-batch: exact (FAISS flat), hnsw (graph) or ivfpq (IVF + product quantisation, "
                         "re-ranked with 8-bit vectors); see benchmarks/results/index_bench_*.json for the measured "
                         "recall, speed and memory")
    pb.add_argument("--shard-size", type=int, default=2_000_000, help="with --from-batch: vectors per shard")
    pb.add_argument("--max-memory", default=None, metavar="SIZE",
                    help="with --from-batch: memory one shard may take (e.g. 4G, 512M); smaller shards when needed")
    pb.add_argument("--ef-search", type=int, default=128, help="hnsw: candidates kept while searching (default "
                    "stored in the index; `index search --ef-search` overrides it)")
    pb.add_argument("--ef-construction", type=int, default=80, help="hnsw: candidates kept while building")
    pb.add_argument("--hnsw-m", type=int, default=32, help="hnsw: graph degree")
    pb.add_argument("--nlist", type=int, default=None, help="ivfpq: inverted lists (default ~4·sqrt(N))")
    pb.add_argument("--nprobe", type=int, default=32, help="ivfpq: lists searched per query (stored default)")
    pb.add_argument("--pq-m", type=int, default=64, help="ivfpq: sub-quantisers per PQ code (must divide the width)")
    pb.add_argument("--pq-bits", type=int, choices=[8, 4], default=8,
                    help="ivfpq: bits per sub-quantiser (4: SIMD fast scan, 16x cheaper to train)")
    pb.add_argument("--refine", choices=["none", "sq8", "flat"], default="sq8",
                    help="ivfpq: re-rank the k·k-factor best PQ candidates with 8-bit (sq8) or exact float32 "
                         "(flat) vectors, or not at all (none)")
    pb.add_argument("--k-factor", type=int, default=16, help="ivfpq: candidates re-ranked, as a multiple of k")
    pb.add_argument("--train-size", type=int, default=65_536, help="ivfpq: vectors sampled to train the quantisers")
    pb.add_argument("--overwrite", action="store_true", help="with --from-batch: replace an existing index folder")
    pb.set_defaults(func=run_build)
    ps = isub.add_parser("search", help="search the index by text or by image")
    q = ps.add_mutually_exclusive_group(required=True)
    q.add_argument("--text")
    q.add_argument("--image")
    ps.add_argument("--index", default="medfoundry-index.npz",
                    help="an index file (.npz) or a sharded index folder built with --from-batch")
    ps.add_argument("-k", type=int, default=10)
    ps.add_argument("--kind", choices=["image", "text", "volume"], default=None,
                    help="return only images or only texts (default: images for --text, anything for --image)")
    ps.add_argument("--weights", default=None)
    ps.add_argument("--slice", type=int, default=None, dest="slice_index")
    ps.add_argument("--json", action="store_true")
    ps.add_argument("--nprobe", type=int, default=None, help="ivfpq index: lists searched (default: as built)")
    ps.add_argument("--ef-search", type=int, default=None, help="hnsw index: candidates kept (default: as built)")
    ps.add_argument("--k-factor", type=int, default=None,
                    help="ivfpq index: candidates re-ranked, as a multiple of k (default: as built)")
    ps.add_argument("--max-memory", default=None, metavar="SIZE",
                    help="index folder larger than SIZE (e.g. 2G): load its shards one at a time per search")
    ps.set_defaults(func=run_search)


def run_build(args: argparse.Namespace) -> int:
    if args.from_batch:
        return _build_from_batch(args)
    if args.kind != "exact":
        raise InputContractError("approximate indexes (--kind hnsw/ivfpq) are built from a batch job's output: "
                                 "`medfoundry batch embed --manifest M --out DIR`, then `index build --from-batch DIR`")
    from medfoundry.cli.contrastive import DEFAULT_MODEL
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.predict.volume_encoder import is_volume_encoder
    from medfoundry.registry.loading import resolve_model
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
    record = resolve_model(args.model or DEFAULT_MODEL, args.weights)[0]
    if is_volume_encoder(record):
        if texts or args.folder is None:
            raise InputContractError(f"{record.name} indexes CT volumes only: give a FOLDER and no --texts")
        from medfoundry.predict.volume_encoder import open_volume_encoder
        from medfoundry.tasks.retrieval import build_volume_index

        index, added, skipped = build_volume_index(open_volume_encoder(args.model, args.weights), args.folder,
                                                   args.index, recursive=not args.no_recursive)
        print(f"{args.index}: {len(index)} volumes ({added} added, {skipped} skipped: unreadable or not volumes) "
              f"with {index.model}")
        return 0
    predictor = open_contrastive(args.model or DEFAULT_MODEL, args.weights)
    index, added, skipped = build_index(predictor, args.folder, args.index, texts=texts,
                                        recursive=not args.no_recursive)
    print(f"{args.index}: {len(index)} items ({added} added, {skipped} unreadable files skipped) "
          f"with {index.model}")
    return 0


def _build_from_batch(args: argparse.Namespace) -> int:
    from medfoundry.tasks.vector_index import IndexParams, build_from_batch_output, parse_bytes

    if args.folder or args.texts:
        raise InputContractError("--from-batch indexes a batch job's embeddings: give no FOLDER and no --texts")
    params = IndexParams(kind=args.kind, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                         ef_search=args.ef_search, nlist=args.nlist, nprobe=args.nprobe, pq_m=args.pq_m,
                         pq_bits=args.pq_bits, refine=args.refine, k_factor=args.k_factor,
                         train_size=args.train_size)
    header = build_from_batch_output(args.from_batch, args.index, params, shard_size=args.shard_size,
                                     overwrite=args.overwrite,
                                     max_memory=None if args.max_memory is None else parse_bytes(args.max_memory))
    print(f"{args.index}: {header.count} images in {len(header.shards)} shard(s), {header.kind} index "
          f"({header.factory}) of {header.model} embeddings")
    return 0


def open_index(path: str, args: argparse.Namespace | None = None):
    """The index at ``path``: a sharded vector index folder (``index.json``, with the search options of ``args``)
    or a ``.npz`` RetrievalIndex."""
    from medfoundry.tasks.retrieval import RetrievalIndex
    from medfoundry.tasks.vector_index import VectorIndex, is_vector_index, parse_bytes

    if not is_vector_index(path):
        return RetrievalIndex.load(path)
    memory = getattr(args, "max_memory", None)
    return VectorIndex(path, max_memory=None if memory is None else parse_bytes(memory),
                       nprobe=getattr(args, "nprobe", None), ef_search=getattr(args, "ef_search", None),
                       k_factor=getattr(args, "k_factor", None))


def run_search(args: argparse.Namespace) -> int:
    from medfoundry.predict.volume_encoder import is_volume_encoder
    from medfoundry.registry.loading import resolve_model

    index = open_index(args.index, args)
    if is_volume_encoder(resolve_model(index.model, args.weights)[0]):
        if args.text or args.slice_index is not None:
            raise InputContractError(f"{args.index} holds {index.model} volume embeddings: search it with --image "
                                     "VOLUME (a NIfTI file or DICOM series folder), without --slice")
        from medfoundry.io import read_image
        from medfoundry.predict.volume_encoder import open_volume_encoder

        query = open_volume_encoder(index.model, args.weights).embed_volumes([read_image(args.image)])[0]
        hits = index.search(query, args.k, kind=args.kind)
    else:
        hits = _search_contrastive(index, args)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
    else:
        for rank, h in enumerate(hits, 1):
            name = h.item if h.kind == "text" else Path(h.item).name
            print(f"{rank:3d}. {h.score:.3f}  {h.kind:6s}  {name[:100]}")
    return 0


def _search_contrastive(index, args: argparse.Namespace) -> list:
    from medfoundry.cli.contrastive import _images
    from medfoundry.predict.contrastive import open_contrastive

    predictor = open_contrastive(index.model, args.weights)
    index.check_model(predictor, args.index)
    if args.text:
        query = predictor.embed_texts([args.text])[0]
        kind = args.kind or "image"
    else:
        query = predictor.embed_images(_images([args.image], args.slice_index))[0]
        kind = args.kind
    return index.search(query, args.k, kind=kind)
