"""The tool-using assistant: routing, evidence, refusals, pluggable writers and their failures."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from medfoundry.errors import EndpointError, InputContractError, WeightsError
from medfoundry.io.image import MedImage
from medfoundry.tasks.answer_writers import CausalLMWriter, HTTPWriter, unsupported_numbers
from medfoundry.tasks.assistant import CANT_TELL, Assistant, asked_finding, check_question, route


@pytest.mark.parametrize(("question", "expected"), [
    ("How big is the lesion?", "measure"), ("Measure this nodule", "measure"),
    ("Show me similar cases", "similar"), ("Where is the liver?", "locate"),
    ("Describe the findings", "findings"), ("Is this a CT or an MRI?", "modality"),
    ("Which plane is this?", "plane"), ("Which body region is shown?", "region"),
    ("Is there pneumonia?", "presence"), ("What is the patient's name?", None),
])
def test_routing_table(question: str, expected: str | None) -> None:
    assert route(question) == expected


def test_questions_are_checked() -> None:
    with pytest.raises(InputContractError, match="empty"):
        check_question("   ")
    with pytest.raises(InputContractError, match="limit"):
        check_question("why " * 200)
    assert asked_finding("Is there pneumonia?") == "pneumonia"
    assert asked_finding("Is there a fracture in the left femur?") == "fracture"


@pytest.fixture(scope="module")
def clip():
    from medfoundry.predict.contrastive import open_contrastive

    return open_contrastive("medfoundry-clip-tiny")


@pytest.fixture
def image() -> MedImage:
    rng = np.random.default_rng(0)
    array = rng.normal(100, 10, (96, 96)).clip(0, 255).astype(np.uint8)
    array[30:60, 40:70] = 230
    return MedImage(array=array, spacing=(0.5, 0.5))


def test_zero_shot_answers_cite_their_scores(clip, image: MedImage) -> None:
    answer = Assistant(contrastive=clip).ask(image, "Is this a CT or an MRI?")
    scores = answer.evidence["scores"]
    assert answer.route == "modality" and not answer.refused
    assert set(scores) == set(clip.record.label_sets["modality"]) and sum(scores.values()) == pytest.approx(1, abs=0.01)
    best = max(scores, key=scores.get)
    assert best in answer.text and f"{scores[best]:.3f}" in answer.text


def test_refusals_are_honest(clip, image: MedImage) -> None:
    assistant = Assistant(contrastive=clip)
    for question in ("What is the patient's name?", "Is there a fracture?", "How big is the lesion?",
                     "Show me similar cases"):
        answer = assistant.ask(image, question)
        assert answer.refused and answer.text.startswith(CANT_TELL) and answer.reason and not answer.evidence
    assert "box" in assistant.ask(image, "How big is the lesion?").reason  # no measurement without a region
    with pytest.raises(InputContractError, match="slice"):
        assistant.ask(MedImage(array=np.zeros((4, 32, 32), np.float32), spacing=(1.0, 1.0, 1.0)), "Is this a CT?")


def test_measurements_come_from_the_mask(image: MedImage) -> None:
    from medfoundry.predict.segment import open_segmenter

    answer = Assistant(segmenter=open_segmenter("medfoundry-sam-lite")).ask(image, "measure the lesion",
                                                                             box=(36, 26, 74, 64))
    m = answer.evidence["measurement"]
    assert answer.route == "measure" and m["pixels"] > 0 and m["long_axis_mm"] > 0
    assert f"{m['long_axis_mm']:.1f}" in answer.text


class _InventingWriter:
    name = "inventor"

    def write(self, question, evidence, draft):
        return "The lesion measures 42.7 mm."  # a number no tool produced


class _FaithfulWriter:
    name = "faithful"

    def write(self, question, evidence, draft):
        best = max(evidence["scores"], key=evidence["scores"].get)
        return f"It is a {best} image ({evidence['scores'][best]})."


def test_a_writer_may_rephrase_but_not_invent_numbers(clip, image: MedImage) -> None:
    invented = Assistant(contrastive=clip, writer=_InventingWriter()).ask(image, "Is this a CT or an MRI?")
    assert invented.writer == "template" and "42.7" not in invented.text
    assert invented.evidence["writer_rejected"]["unsupported_numbers"] == ["42.7"]
    faithful = Assistant(contrastive=clip, writer=_FaithfulWriter()).ask(image, "Is this a CT or an MRI?")
    assert faithful.writer == "faithful" and faithful.text.startswith("It is a")
    assert unsupported_numbers("about 0.50 and 3", {"p": 0.4999}, "3 labels") == []


class _Handler(BaseHTTPRequestHandler):
    delay = 0.0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        assert body["messages"][0]["role"] == "system"
        reply = {"choices": [{"message": {"role": "assistant", "content": "From the endpoint."}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _server(delay: float) -> HTTPServer:
    handler = type("H", (_Handler,), {"delay": delay})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_http_writer_answers_and_fails_with_typed_errors() -> None:
    server = _server(0.0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        assert HTTPWriter(url, "key", timeout=5).write("q", {}, "draft") == "From the endpoint."
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(EndpointError, match="cannot reach"):
        HTTPWriter(url, timeout=2).write("q", {}, "draft")  # the server is gone
    slow = _server(2.0)
    try:
        with pytest.raises(EndpointError, match="within"):
            HTTPWriter(f"http://127.0.0.1:{slow.server_port}/v1", timeout=0.3).write("q", {}, "draft")
    finally:
        slow.shutdown()
        slow.server_close()
    with pytest.raises(InputContractError):
        HTTPWriter("ftp://example.org")


def test_a_language_model_without_a_chat_template_is_refused(tmp_path) -> None:
    from medfoundry.models.captioner import load_language_model
    from tiny_causal_lm import tiny_language_model

    model, tokenizer = load_language_model(f"local-dir:{tiny_language_model(tmp_path)}")
    with pytest.raises(WeightsError, match="chat template"):
        CausalLMWriter(model, tokenizer)


def test_ask_without_a_model_uses_the_assistant(tmp_path, capsys) -> None:
    from PIL import Image

    from medfoundry.cli.main import main

    Image.fromarray(np.full((64, 64), 120, np.uint8)).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["ask", str(tmp_path / "x.png"), "Which plane is this?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["route"] == "plane" and set(out["evidence"]["scores"]) == {"axial", "coronal", "sagittal"}
    assert main(["ask", str(tmp_path / "x.png"), "  "]) == 2
    assert main(["ask", str(tmp_path / "x.png"), "Which plane is this?", "--writer", "http"]) == 2
    assert main(["ask", str(tmp_path / "x.png"), "Which plane is this?", "--writer", "http",
                 "--llm-url", "http://127.0.0.1:9/v1", "--llm-timeout", "2"]) == 2  # nothing listens on port 9
