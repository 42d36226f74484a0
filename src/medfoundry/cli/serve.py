"""``medfoundry serve``: the web viewer and HTTP API (FastAPI + uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the web viewer: upload images, draw boxes, masks, labels, heatmaps")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default: this machine only; any other needs --token)")
    p.add_argument("--token", default=None,
                   help="bearer token required on every route (default: $MEDFOUNDRY_TOKEN); open the page with "
                        "/?token=TOKEN once")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="an origin allowed to call the API from its pages (repeatable; default: CORS off)")
    p.add_argument("--ttl-minutes", type=float, default=60.0, help="forget uploads unused for this long")
    p.add_argument("--calibration", default=None, help="calibration file (medfoundry calibrate) for the labels")
    p.add_argument("--uncertain-below", type=float, default=None,
                   help="show an abstention when the top label probability is below this")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--demo", default="demo-output", help="folder written by `medfoundry demo`, shown at /demo")
    p.add_argument("--index", default=None, help="retrieval index from `medfoundry index build` for similar cases "
                                                "(default: search among the uploads); its texts (--texts) are the "
                                                "report bank")
    p.add_argument("--store", default=None, help="folder for uploads (default: a private temporary folder)")
    p.add_argument("--max-upload-mb", type=float, default=512.0, help="refuse larger uploads")
    p.add_argument("--seg-model", default="default",
                   help="segmentation model; default: medfoundry-sam-lite for 2D and points, medfoundry-box3d-tiny "
                        "for one box propagated through a volume")
    p.add_argument("--clip-model", default="medfoundry-clip-tiny")
    p.add_argument("--chat-model", default=None,
                   help="conversational model for questions about an image (e.g. llava-med; none by default)")
    p.add_argument("--chat-weights", default=None, help="weights folder for --chat-model")
    p.add_argument("--deid", action="store_true",
                   help="de-identify DICOM uploads (PS3.15 Annex E basic profile) before they are stored; other "
                        "formats are refused; upload names are not kept")
    p.add_argument("--clean-pixels", action="store_true",
                   help="with --deid: blank burned-in text where the curated filters of pydicom's deid package "
                        "name it for the device; without it, uploads declaring burned-in annotation are refused")
    p.add_argument("--seg-threads", type=int, default=1,
                   help="PyTorch threads of the segmentation worker (default 1: best on a shared machine; 0: one "
                        "per core)")
    p.add_argument("--seg-workers", type=int, default=1,
                   help="segmentation worker threads, each with its own copy of the model and embedding cache: "
                        "concurrent clicks run on that many cores (default 1; see benchmarks/serve_load.py)")
    p.add_argument("--embed-pool", type=int, default=1, choices=[1, 2],
                   help="2: lite segmenters decode clicks on the 2× pooled embedding (about 2.5× faster per click, "
                        "coarser: Kvasir Dice 0.917 vs 0.920)")
    p.add_argument("--fast-prompts", action="store_true",
                   help="run the mask decoder in bfloat16 where the CPU has native bfloat16 (about twice as fast "
                        "per click; masks agree with float32's to IoU > 0.99, see benchmarks/serve_load.py)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medfoundry.errors import MedfoundryError
    from medfoundry.serve.app import create_app
    from medfoundry.serve.security import resolve_token
    from medfoundry.serve.workbench import Workbench

    try:
        import uvicorn
    except ImportError as exc:
        raise MedfoundryError("medfoundry serve needs its extra: pip install 'medfoundry[serve]'") from exc
    token = resolve_token(args.host, args.token)
    if args.clean_pixels and not args.deid:
        raise MedfoundryError("--clean-pixels applies to de-identified uploads: add --deid")
    fast = False
    if args.fast_prompts:
        from medfoundry.models.sam_fast import native_bf16

        fast = native_bf16()
    bench = Workbench(store=args.store, ttl_seconds=args.ttl_minutes * 60, calibration=args.calibration,
                      uncertain_below=args.uncertain_below, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                      contrastive_model=args.clip_model, segmentation_model=args.seg_model, index=args.index,
                      chat_model=args.chat_model, chat_weights=args.chat_weights,
                      deid=_deidentifier(args.deid, args.clean_pixels), seg_threads=args.seg_threads or None,
                      seg_workers=args.seg_workers, seg_embed_pool=args.embed_pool,
                      seg_decoder_precision="bf16" if fast else "fp32")
    app = create_app(bench, demo_dir=args.demo, token=token, cors_origins=args.cors_origin)
    print(f"medfoundry viewer on http://{args.host}:{args.port}/  (demo page: /demo/, API: /v1, docs: /docs)"
          + ("  token required: open /?token=... once" if token else ""))
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:  # uvicorn's access log would print query strings: the app logs method, route, status and time
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    finally:
        bench.close()
    return 0


def _deidentifier(enabled: bool, clean_pixels: bool = False):
    if not enabled:
        return None
    from medfoundry.io.deid import Deidentifier

    return Deidentifier(clean_pixels=clean_pixels)
