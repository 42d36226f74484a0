"""``medfoundry ask IMAGE QUESTION``: a conversational model (``--model``: LLaVA-Med ...) answers, or, without
one, the tool-using assistant routes the question to a tool and answers with the evidence it used."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask about an image: a conversational model (--model), or the tool-using "
                                   "assistant (zero-shot labels, grounding, measurements, similar cases, caption)")
    p.add_argument("image", help="image file or DICOM folder")
    p.add_argument("question", help='the question, e.g. "Is this a CT or an MRI?"')
    p.add_argument("--model", default=None,
                   help="a conversational model (registry name or local-dir:PATH); omit it for the assistant")
    p.add_argument("--weights", default=None, help="override the conversational model's weights")
    p.add_argument("--slice", type=int, default=None, dest="slice_index", help="slice of a volume")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer, in tokens (greedy decoding)")
    p.add_argument("--vision-tower", default=None,
                   help="original-LLaVA checkpoints: the CLIP tower's folder or hub id (default: the record's)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow Python code shipped with the checkpoint to run (only for sources you trust)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the answer with its evidence (or prompt) as JSON")
    g = p.add_argument_group("assistant (without --model)")
    g.add_argument("--box", default=None, help="x0,y0,x1,y1 in image pixels: the region to measure")
    g.add_argument("--index", default=None, help="an index of cases (`medfoundry index build`) for similar cases")
    g.add_argument("--clip", default="medfoundry-clip-tiny", help="the zero-shot / grounding / retrieval model")
    g.add_argument("--seg-model", default="medfoundry-sam-lite", help="the segmenter for measurements")
    g.add_argument("--captioner", default="medfoundry-captioner-tiny", help="the captioner for findings questions")
    g.add_argument("--writer", choices=["template", "local", "http"], default="template",
                   help="who phrases the answer: the deterministic template (default), a local causal LM "
                        "(--writer-model), or an OpenAI-compatible endpoint (--llm-url)")
    g.add_argument("--writer-model", default="smollm2-135m-instruct",
                   help="--writer local: smollm2-135m-instruct (embedded) or local-dir:PATH of a chat LM")
    g.add_argument("--llm-url", default=None, help="--writer http: base URL, e.g. http://localhost:8000/v1")
    g.add_argument("--llm-model", default="default", help="--writer http: the model name the endpoint expects")
    g.add_argument("--llm-timeout", type=float, default=30.0, help="--writer http: seconds to wait")
    p.set_defaults(func=run)


def _writer(args: argparse.Namespace):
    from medfoundry.errors import InputContractError
    from medfoundry.tasks.answer_writers import CausalLMWriter, HTTPWriter, TemplateWriter

    if args.writer == "local":
        return CausalLMWriter.from_name(args.writer_model)
    if args.writer == "http":
        if not args.llm_url:
            raise InputContractError("--writer http needs --llm-url (the key is read from $MEDFOUNDRY_LLM_KEY)")
        return HTTPWriter(args.llm_url, os.environ.get("MEDFOUNDRY_LLM_KEY"), args.llm_model, args.llm_timeout)
    return TemplateWriter()


def run_assistant(args: argparse.Namespace) -> int:
    from medfoundry.cli.contrastive import _images
    from medfoundry.tasks.assistant import check_question, open_assistant

    check_question(args.question)  # before any model loads
    box = None
    if args.box:
        from medfoundry.cli.segment import _numbers

        box = _numbers(args.box, (4,), "box")
    image = _images([args.image], args.slice_index)[0]
    assistant = open_assistant(args.clip, args.seg_model, args.captioner, index=args.index, writer=_writer(args))
    answer = assistant.ask(image, args.question, box=box)
    print(json.dumps(answer.as_dict(), indent=2) if args.json else answer.text)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.model is None:
        return run_assistant(args)
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
