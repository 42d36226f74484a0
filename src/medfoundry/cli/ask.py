"""``medfoundry ask IMAGE QUESTION``: visual question answering with a conversational model (LLaVA-Med ...)."""

from __future__ import annotations

import argparse
import json

from medfoundry.cli.models import add_model_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask a conversational model (VQA / chat: LLaVA-Med ...) about an image")
    p.add_argument("image", help="image file or DICOM folder")
    p.add_argument("question", help='the question, e.g. "Is there a pleural effusion?"')
    add_model_flags(p, required=True)
    p.add_argument("--slice", type=int, default=None, dest="slice_index", help="slice of a volume")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer, in tokens (greedy decoding)")
    p.add_argument("--vision-tower", default=None,
                   help="original-LLaVA checkpoints: the CLIP tower's folder or hub id (default: the record's)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow Python code shipped with the checkpoint to run (only for sources you trust)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the answer, the prompt and timing as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medfoundry.cli.contrastive import _images
    from medfoundry.predict.conversational import open_chat

    image = _images([args.image], args.slice_index)[0]
    chat = open_chat(args.model, args.weights, args.device, trust_remote_code=args.trust_remote_code,
                     vision_tower=args.vision_tower)
    answer = chat.ask(image, args.question, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"model": chat.record.name, "question": args.question, "answer": answer.text,
                          "prompt": answer.prompt, "new_tokens": answer.new_tokens,
                          "seconds": round(answer.seconds, 3)}, indent=2))
    else:
        print(answer.text)
    return 0
