"""Similarities that load a model: sentence embeddings (all-MiniLM-L6-v2, offline) and a cross-encoder (slow)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import pipeline, run_folder, score
from curation.score import SIMILARITIES

pytestmark = pytest.mark.slow

REFS = ["The knockdown lowers expression, so the answer is downregulated.", "", "Expression goes up: upregulated."]
SAMPLES = [
    ["The knockdown lowers expression, so the answer is downregulated.", "Paris is the capital of France.", ""],
    ["anything", "else", "here"],
    ["Expression increases, so upregulated.", "Expression goes up: upregulated.", "The stock market fell today."],
]


def test_embedding_similarity_offline():
    sim = SIMILARITIES["embedding"].fn(REFS, SAMPLES, None, None)
    assert sim.shape == (3, 3) and ((sim >= 0) & (sim <= 1)).all()
    assert sim[0, 0] == pytest.approx(1.0, abs=1e-5)  # identical texts
    assert sim[0, 2] == 0.0 and (sim[1] == 0).all()  # an empty text is similar to nothing
    assert sim[2, 1] == pytest.approx(1.0, abs=1e-5)
    assert sim[2, 0] > sim[2, 2] + 0.2 and sim[0, 0] > sim[0, 1] + 0.3  # paraphrase beats an unrelated sentence
    # cosine of the unit-norm embeddings, computed directly
    vectors = score.embed([REFS[2], SAMPLES[2][0]])
    assert sim[2, 0] == pytest.approx(float(np.clip(vectors[0] @ vectors[1], 0, 1)), abs=1e-6)


def test_embedding_keeps_the_end_of_long_traces():
    # the answers differ only at the very end of a trace far longer than MiniLM's 256-token window
    preamble = "Let me think about the regulatory network step by step. " * 80
    sim = SIMILARITIES["embedding"].fn([preamble + "Final answer: upregulated."], [[preamble + "Final answer: upregulated.", preamble + "Final answer: the weather in Oslo is cold and rainy."]], None, None)
    assert sim[0, 0] == pytest.approx(1.0, abs=1e-5) and sim[0, 1] < 0.99


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A randomly initialised one-layer BERT cross-encoder with MiniLM's tokenizer: exercises loading and scoring offline."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(score.default_embedding_model())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_cross_encoder_similarity(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    sim = SIMILARITIES["cross_encoder"].fn(REFS, SAMPLES, None, None, model=tiny_cross_encoder)
    assert sim.shape == (3, 3) and ((sim >= 0) & (sim <= 1)).all()
    assert (sim[1] == 0).all() and sim[0, 2] == 0.0
    encoder = CrossEncoder(tiny_cross_encoder, device="cpu")
    forward = encoder.predict([(REFS[2], SAMPLES[2][0])])[0]
    backward = encoder.predict([(SAMPLES[2][0], REFS[2])])[0]
    assert sim[2, 0] == pytest.approx((forward + backward) / 2, abs=1e-5)  # both orders averaged, as LM-Polygraph


def test_cross_encoder_needs_a_model():
    with pytest.raises(ValueError, match="similarity_model"):
        SIMILARITIES["cross_encoder"].fn(REFS, SAMPLES, None, None)


def test_rescore_with_embedding_similarity(tmp_path):
    from tests.builders.eval_run import build_run as make_run

    run_dir = make_run(tmp_path / "run", n=9)
    before = pq.read_table(run_dir / run_folder.SCORED_FILE)
    summary = pipeline.rescore(run_dir, {"score": {"metric": "cocoa_ppl", "similarity": "embedding"}}, show_progress=False)
    after = pq.read_table(run_dir / run_folder.SCORED_FILE)
    assert summary.similarity == "embedding"
    consistency = np.array(after.column("semantic_consistency").to_pylist())
    assert ((consistency >= 0) & (consistency <= 1)).all()
    assert not np.allclose(consistency, before.column("semantic_consistency").to_pylist())
    ppl = np.array(after.column("perplexity").to_pylist())
    assert np.allclose(after.column("cocoa_ppl").to_pylist(), ppl * consistency)
