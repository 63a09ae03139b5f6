"""The one length-sorted batching (retrieval.token_batches) against the tokenizer's own padding,
on real NovelEval text with the tiny model's tokenizer, for single texts and for pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from retrieval.datasets import iter_corpus, read_tsv_queries
from retrieval.token_batches import TokenIds


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def texts(noveleval: Path) -> tuple[list[str], list[str]]:
    queries = list(read_tsv_queries(noveleval / "queries.tsv").values())[:9]
    passages = [p.full_text for p in iter_corpus(noveleval)][:9]
    return queries, passages


def test_batches_are_longest_first_and_cover_every_row_once(tokenizer, texts) -> None:
    mixed = [t for pair in zip(*texts) for t in pair][:9]  # queries and passages: lengths differ
    tokens = TokenIds.of(tokenizer(mixed, truncation=True, max_length=48)["input_ids"])
    batches = tokens.batches(4)
    assert [len(b) for b in batches] == [4, 4, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(mixed)))
    flat = [int(tokens.lengths[r]) for b in batches for r in b]
    assert flat == sorted(flat, reverse=True)
    assert len(set(tokens.lengths.tolist())) > 1  # real text: lengths differ, so the sort matters
    with pytest.raises(ValueError, match="batch_size"):
        tokens.batches(0)


def test_padding_equals_the_tokenizers_own(tokenizer, texts) -> None:
    passages = [t for pair in zip(*texts) for t in pair]
    tokens = TokenIds.of(tokenizer(passages, truncation=True, max_length=48)["input_ids"])
    for rows in tokens.batches(4):
        ids, mask, types = tokens.pad(rows, tokenizer.pad_token_id)
        theirs = tokenizer([passages[r] for r in rows], truncation=True, max_length=48, padding=True, return_tensors="np")
        assert ids.dtype == mask.dtype == np.int64
        np.testing.assert_array_equal(ids, theirs["input_ids"])
        np.testing.assert_array_equal(mask, theirs["attention_mask"])
        np.testing.assert_array_equal(types, np.zeros_like(ids))


def test_pairs_keep_their_segment_ids(tokenizer, texts) -> None:
    queries, passages = texts
    encoded = tokenizer(queries, passages, truncation="longest_first", max_length=64)
    tokens = TokenIds.of(encoded["input_ids"], encoded["token_type_ids"])
    rows = tokens.batches(5)[0]
    ids, mask, types = tokens.pad(rows, tokenizer.pad_token_id)
    theirs = tokenizer([queries[r] for r in rows], [passages[r] for r in rows], truncation="longest_first",
                       max_length=64, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ids, theirs["input_ids"])
    np.testing.assert_array_equal(mask, theirs["attention_mask"])
    np.testing.assert_array_equal(types, theirs["token_type_ids"])
    assert types.max() == 1  # the passage segment is really there
    with pytest.raises(ValueError, match="one entry per token"):
        TokenIds.of(encoded["input_ids"][:2], [[0]] * 2)
