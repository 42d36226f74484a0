"""A tool-using assistant (ChatCAD-style): a question about an image is routed to a tool, and the answer cites
the evidence the tool produced. No chat model is needed; a writer only rephrases (see
:mod:`medfoundry.tasks.answer_writers`).

Routing is a fixed, readable rule (:func:`route`, first match wins):

=============  =====================================================  ==============================================
route          question mentions                                      tool and evidence
=============  =====================================================  ==============================================
``measure``    measure, size, how big/large, diameter, area, volume   promptable segmentation of ``box`` + measurement
``similar``    similar, like this, other/prior cases                  retrieval in ``index``: the nearest cases
``locate``     where, locate, highlight, show me, point to            grounding: CLIP patch similarity → a box
``findings``   findings, report, describe, what do you see, caption   the captioner's caption + the findings extractor
``modality``   CT, MRI, x-ray, modality, what kind of scan            zero-shot over the model's ``modality`` labels
``plane``      plane, axial, coronal, sagittal, orientation           zero-shot over ``plane``
``region``     region, body part, which part, anatomy                 zero-shot over ``region``
``presence``   "is there / does it show X" with X in a label set      zero-shot over the label set holding X
=============  =====================================================  ==============================================

Anything else, or a tool that lacks what it needs (no box to measure, no index to search, a finding outside
every label set, a chest question on an image that is not a radiograph), gets an honest refusal that starts
"I can't tell from this image" and says why. Measurements come only from a mask; no writer may add a number
that the evidence lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.tasks.answer_writers import AnswerWriter, TemplateWriter, unsupported_numbers

MAX_QUESTION_CHARS = 500
CANT_TELL = "I can't tell from this image"

ROUTES: tuple[tuple[str, str], ...] = (
    ("measure", r"\b(measure\w*|size|how (big|large)|diameters?|dimensions?|area|volume)\b"),
    ("similar", r"\b(similar|like this|comparable|other cases|prior cases|retriev\w*)\b"),
    ("locate", r"\b(where|locat\w*|highlight|show me|point to)\b"),
    ("findings", r"\b(findings?|report|describe|what do you see|caption|impression)\b"),
    ("modality", r"\b(ct|mri?|x-?ray|radiograph|modality|endoscop\w*|(what kind|type) of (image|scan))\b"),
    ("plane", r"\b(plane|axial|coronal|sagittal|orientation)\b"),
    ("region", r"\b(region|body part|which part|anatomy)\b"),
    ("presence", r"^(is|are|does|do|can you see)\b"),
)


@dataclass
class AssistantAnswer:
    """The answer ``text``, the ``route`` taken (None when refused), the tool's ``evidence`` (JSON-able),
    whether it was a refusal and why, and which writer wrote the text."""

    question: str
    text: str
    route: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    refused: bool = False
    reason: str = ""
    writer: str = "template"

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.text, "route": self.route, "evidence": self.evidence,
                "refused": self.refused, "reason": self.reason, "writer": self.writer}


def check_question(question: str) -> str:
    """The question stripped; InputContractError when it is empty or longer than :data:`MAX_QUESTION_CHARS`."""
    if not question or not question.strip():
        raise InputContractError("ask a question: the text is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise InputContractError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return " ".join(question.split())


def route(question: str) -> str | None:
    """The route of :data:`ROUTES` whose pattern the (lower-cased) question matches first, else None."""
    text = question.lower()
    for name, pattern in ROUTES:
        if re.search(pattern, text):
            return name
    return None


def asked_finding(question: str) -> str:
    """The thing asked about in "is there (a/an/any) X ...?" ("pneumonia" from "Is there pneumonia?")."""
    m = re.search(r"(?:is there|are there|does (?:it|this|the image) show|do you see|can you see|is this|is it)"
                  r"\s+(?:an?\s+|any\s+|the\s+)?([a-z][a-z\- ]*?)(?:\s+(?:in|on|of)\b.*)?\s*\??$", question.lower())
    return m.group(1).strip() if m else ""


class Assistant:
    """Routes questions to tools. Tools are given (or opened lazily on first use by :func:`open_assistant`):
    ``contrastive`` (zero-shot, grounding, retrieval), ``segmenter`` (measure), ``index`` (similar cases),
    ``captioner`` (findings); ``writer`` phrases the answer (template by default)."""

    def __init__(self, contrastive: Any = None, segmenter: Any = None, index: Any = None, captioner: Any = None,
                 writer: AnswerWriter | None = None, loaders: dict[str, Any] | None = None) -> None:
        self._tools = {"contrastive": contrastive, "segmenter": segmenter, "index": index, "captioner": captioner}
        self._loaders = loaders or {}
        self.writer = writer or TemplateWriter()

    def tool(self, name: str) -> Any:
        """The tool ``name``, opened now by its loader if it was not given (None when neither)."""
        if self._tools.get(name) is None and name in self._loaders:
            self._tools[name] = self._loaders[name]()
        return self._tools.get(name)

    def ask(self, image: MedImage, question: str, box: Any = None, k: int = 3) -> AssistantAnswer:
        """Answer ``question`` about a 2D ``image``; ``box`` (x0, y0, x1, y1 in image pixels) for measurements,
        ``k`` similar cases. Volumes raise InputContractError (give a slice)."""
        question = check_question(question)
        if image.is_volume:
            raise InputContractError("the assistant reads 2D images: give a slice of the volume (--slice K)")
        name = route(question)
        if name is None:
            return self._refuse(question, None, "no tool answers this kind of question (the tools answer: modality, "
                                "plane, body region, listed findings, where something is, measurements of a boxed "
                                "region, similar cases, a caption)")
        outcome = getattr(self, f"_{name}")(image, question, box=box, k=k)
        if isinstance(outcome, str):
            return self._refuse(question, name, outcome)
        draft, evidence = outcome
        text, writer = draft, "template"
        if not isinstance(self.writer, TemplateWriter):
            written = self.writer.write(question, evidence, draft)
            bad = unsupported_numbers(written, evidence, draft)
            if bad or not written:
                evidence = {**evidence, "writer_rejected": {"writer": self.writer.name, "text": written,
                                                            "unsupported_numbers": bad}}
            else:
                text, writer = written, self.writer.name
        return AssistantAnswer(question, text, name, evidence, writer=writer)

    def _refuse(self, question: str, name: str | None, reason: str) -> AssistantAnswer:
        return AssistantAnswer(question, f"{CANT_TELL}: {reason}.", name, {}, refused=True, reason=reason)

    # --- tools: each returns (draft text, evidence) or a refusal reason -------------------------------------------
    def _zero_shot(self, image: MedImage, set_name: str, what: str) -> tuple[str, dict] | str:
        from medfoundry.tasks.zero_shot import label_set, zero_shot_classify

        clip = self.tool("contrastive")
        if clip is None:
            return "no zero-shot model is loaded"
        sets = clip.record.label_sets
        if set_name not in sets:
            return f"{clip.record.name} has no {set_name} labels"
        prompts = label_set(clip, set_name)
        result = zero_shot_classify(clip, [image], list(prompts), prompts=prompts)
        scores = {lab: round(float(p), 3) for lab, p in zip(result.labels, result.probs[0], strict=True)}
        best = max(scores, key=lambda lab: scores[lab])
        evidence = {"tool": "zero-shot classification", "model": clip.record.name, "label_set": set_name,
                    "scores": scores}
        return f"The {what} looks like {best.replace('_', ' ')} (zero-shot probability {scores[best]:.3f}).", evidence

    def _modality(self, image: MedImage, question: str, **_: Any) -> tuple[str, dict] | str:
        return self._zero_shot(image, "modality", "modality")

    def _plane(self, image: MedImage, question: str, **_: Any) -> tuple[str, dict] | str:
        return self._zero_shot(image, "plane", "imaging plane")

    def _region(self, image: MedImage, question: str, **_: Any) -> tuple[str, dict] | str:
        return self._zero_shot(image, "region", "body region")

    def _presence(self, image: MedImage, question: str, **_: Any) -> tuple[str, dict] | str:
        finding = asked_finding(question)
        clip = self.tool("contrastive")
        if clip is None:
            return "no zero-shot model is loaded"
        holder = next((name for name, labels in clip.record.label_sets.items()
                       if finding and finding in [lab.lower() for lab in labels]), None)
        if holder is None:
            known = sorted({lab for labels in clip.record.label_sets.values() for lab in labels})
            return (f"{finding or 'what you ask about'!r} is not among the findings {clip.record.name} was checked "
                    f"on ({', '.join(known)})")
        if holder == "chest_finding":  # only meaningful on a chest radiograph
            modality = self._zero_shot(image, "modality", "modality")
            if isinstance(modality, tuple) and "radiograph" in modality[1]["scores"]:
                scores = modality[1]["scores"]
                if max(scores, key=lambda lab: scores[lab]) != "radiograph":
                    return (f"the question is about a chest radiograph finding but the image does not look like a "
                            f"radiograph (modality scores {scores})")
        outcome = self._zero_shot(image, holder, "image")
        if isinstance(outcome, str):
            return outcome
        _, evidence = outcome
        p = evidence["scores"][next(lab for lab in evidence["scores"] if lab.lower() == finding)]
        answer = "Probably yes" if p >= 0.5 else "Probably not"
        return f"{answer}: zero-shot probability of {finding} {p:.3f}.", evidence

    def _locate(self, image: MedImage, question: str, **_: Any) -> tuple[str, dict] | str:
        from medfoundry.tasks.text_to_mask import propose_box

        clip = self.tool("contrastive")
        target = re.sub(r"^(where|locate|highlight|show me|point to)\s+(is|are)?\s*(the|an?)?\s*", "",
                        question.lower()).strip(" ?.")
        if clip is None or not target:
            return "say what to look for, e.g. 'where is the lesion?'" if clip else "no grounding model is loaded"
        heat = clip.dense_similarity(image, target)
        box, _ = propose_box(heat, image.spatial_shape)
        box = [round(float(v)) for v in box]
        evidence = {"tool": "grounding", "model": clip.record.name, "query": target, "box_xyxy": box,
                    "peak_similarity": round(float(heat.max()), 3), "mean_similarity": round(float(heat.mean()), 3)}
        return (f"The region most similar to '{target}' is the box x {box[0]}–{box[2]}, y {box[1]}–{box[3]} "
                f"(peak patch similarity {evidence['peak_similarity']:.3f}); grounding is approximate."), evidence

    def _measure(self, image: MedImage, question: str, box: Any = None, **_: Any) -> tuple[str, dict] | str:
        from medfoundry.tasks.measure import measure

        if box is None:
            return "a measurement needs the region to measure: give a box around it (--box x0,y0,x1,y1)"
        segmenter = self.tool("segmenter")
        if segmenter is None:
            return "no segmentation model is loaded"
        box_arr = np.asarray(box, dtype=np.float64).reshape(4)
        segmenter.set_image(image)
        mask = segmenter.predict(boxes=box_arr[None]).best()[0]
        if not mask.any():
            return "the segmenter found nothing inside the box, so there is nothing to measure"
        m = measure(mask, image)
        evidence = {"tool": "segmentation + measurement", "model": segmenter.record.name,
                    "box_xyxy": box_arr.tolist(), "measurement": m.to_dict()}
        return f"The segmented region inside the box measures {m.describe()}.", evidence

    def _similar(self, image: MedImage, question: str, k: int = 3, **_: Any) -> tuple[str, dict] | str:
        index, clip = self.tool("index"), self.tool("contrastive")
        if index is None or clip is None:
            return "finding similar cases needs an index of cases (build one with `medfoundry index build`)"
        index.check_model(clip)
        hits = index.search(clip.embed_images([image])[0], k=k, kind="image")
        if not hits:
            return "the index holds no images"
        cases = [{"item": h.item, "similarity": round(h.score, 3)} for h in hits]
        evidence = {"tool": "retrieval", "model": clip.record.name, "cases": cases}
        listed = "; ".join(f"{c['item']} ({c['similarity']:.3f})" for c in cases)
        return f"The most similar indexed cases are: {listed}.", evidence

    def _findings(self, image: MedImage, question: str, **_: Any) -> tuple[str, dict] | str:
        from medfoundry.tasks.findings import keyword_findings

        captioner = self.tool("captioner")
        if captioner is None:
            return "no captioner is loaded"
        caption = captioner.generate(image)
        found = keyword_findings(caption.text)
        positives = sorted(found.positives(uncertain_as="negative"))
        evidence = {"tool": "captioner + findings extractor", "model": captioner.name, "caption": caption.text,
                    "findings_positive": positives}
        return (f"Generated caption (small model, verify it): \"{caption.text}\"" +
                (f" Findings it mentions: {', '.join(positives)}." if positives else "")), evidence


def open_assistant(contrastive: str = "medfoundry-clip-tiny", segmenter: str = "medfoundry-sam-lite",
                   captioner: str = "medfoundry-captioner-tiny", index: Any = None,
                   writer: AnswerWriter | None = None) -> Assistant:
    """An :class:`Assistant` whose tools open on first use (a question about modality never loads the segmenter).
    ``index`` is a :class:`~medfoundry.tasks.retrieval.RetrievalIndex` path or object (None: no similar cases)."""
    from medfoundry.predict.captioner import open_captioner
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.predict.segment import open_segmenter

    loaders: dict[str, Any] = {"contrastive": lambda: open_contrastive(contrastive),
                               "segmenter": lambda: open_segmenter(segmenter),
                               "captioner": lambda: open_captioner(captioner)}
    if index is not None:
        from medfoundry.tasks.retrieval import RetrievalIndex

        loaders["index"] = (lambda: RetrievalIndex.load(index)) if not hasattr(index, "search") else (lambda: index)
    return Assistant(writer=writer, loaders=loaders)
