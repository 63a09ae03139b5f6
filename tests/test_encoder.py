"""DualEncoder: save/load, batching invariance, masked pooling, token outputs, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.encoder import ENCODER_CONFIG_FILE, DualEncoder
from retrieval.errors import EncoderError
from retrieval.pooling import pool

TEXTS = [
    "The film was released in 2023 by Sony Pictures.",
    "short",
    "A considerably longer passage about the animated superhero film and its sequel, "
    "which is set in a shared multiverse of alternate universes.",
    "",
]


def test_vectors_are_unit_float32(tiny_encoder: DualEncoder) -> None:
    vectors = tiny_encoder.encode_passages(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_one_at_a_time_equals_batched(tiny_encoder: DualEncoder) -> None:
    batched = tiny_encoder.encode_passages(TEXTS, batch_size=3)
    single = np.stack([tiny_encoder.encode_passages([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # the length-sorted batching must give rows back in input order
    assert not np.allclose(batched[0], batched[1])


def test_masked_mean_pooling_ignores_padding() -> None:
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])  # [1, 3, 2]
    mask = torch.tensor([[1, 1, 0]])
    assert pool(states, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(states, mask, "cls").tolist() == [[1.0, 2.0]]


def test_save_load_round_trip(tiny_encoder: DualEncoder, tmp_path: Path) -> None:
    out = tiny_encoder.save_pretrained(tmp_path / "copy")
    config = json.loads((out / ENCODER_CONFIG_FILE).read_text())
    assert config["pooling"] == "mean" and config["dimension"] == 32 and config["max_query_length"] == 32
    loaded = DualEncoder.from_pretrained(out)
    assert loaded.fingerprint == tiny_encoder.fingerprint
    np.testing.assert_allclose(loaded.encode_queries(TEXTS), tiny_encoder.encode_queries(TEXTS), atol=1e-6)
    # sentence-transformers module files are written so other tools can load the student
    assert json.loads((out / "modules.json").read_text())[1]["path"] == "1_Pooling"


def test_tampered_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))
    config = json.loads((copy / ENCODER_CONFIG_FILE).read_text())
    config["pooling"] = "cls"  # settings changed without a new fingerprint
    (copy / ENCODER_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(EncoderError, match="fingerprint"):
        DualEncoder.from_pretrained(copy)


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="not a model directory"):
        DualEncoder.from_pretrained(tmp_path / "nowhere")


def test_token_embeddings_have_offsets(tiny_encoder: DualEncoder) -> None:
    [tokens] = tiny_encoder.encode_tokens(["sony pictures film"], "query")
    assert tokens.embeddings.shape[0] == tokens.offsets.shape[0] == tokens.special.shape[0]
    assert tokens.special[0] and tokens.special[-1] and not tokens.special[1:-1].any()
    spans = ["sony pictures film"[a:b] for a, b in tokens.offsets[~tokens.special]]
    assert "".join(spans) == "sonypicturesfilm"


def test_training_forward_is_differentiable(tiny_encoder: DualEncoder) -> None:
    batch = tiny_encoder.tokenize(TEXTS[:2], "passage")
    pooled, states = tiny_encoder.forward(batch)
    assert pooled.shape == (2, 32) and states.shape[:2] == batch["input_ids"].shape
    assert pooled.requires_grad
    np.testing.assert_allclose(pooled.detach().numpy(), tiny_encoder.encode_passages(TEXTS[:2]), atol=1e-5)
