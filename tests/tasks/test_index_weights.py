"""A retrieval index (or report bank) names the weights that embedded it, and refuses embeddings of others."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medfoundry.errors import InputContractError
from medfoundry.registry.loading import LoadedWeights
from medfoundry.tasks.retrieval import RetrievalIndex

pytest.importorskip("faiss")


def _predictor(name: str, weights: Path) -> SimpleNamespace:
    return SimpleNamespace(record=SimpleNamespace(name=name, weights=[]), loaded_weights=LoadedWeights(weights),
                           embed_texts=lambda texts: np.ones((len(texts), 4), np.float32) / 2)


def test_an_index_refuses_other_weights_of_the_same_model(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    index = RetrievalIndex.for_predictor(_predictor("clip", a))
    assert index.weights_sha256 == LoadedWeights(a).sha256 and index.dim == 4
    index.save(tmp_path / "index")
    loaded = RetrievalIndex.load(tmp_path / "index")
    loaded.check_model(_predictor("clip", a))  # the same weights: fine
    with pytest.raises(InputContractError, match="other weights"):
        loaded.check_model(_predictor("clip", b))
    with pytest.raises(InputContractError, match="built with clip"):
        loaded.check_model(_predictor("other", a))
