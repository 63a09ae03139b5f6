"""File readers for the dataset formats the project uses: BEIR, MS MARCO / TREC and NovelEval
(corpora, queries, TREC topics, qrels, TREC DL candidate pools). :mod:`retrieval.datasets` builds
whole datasets (a corpus with one split's queries and judgements) from them and re-exports them.

Every reader validates as it goes. A malformed record raises :class:`DatasetFormatError` with a
one-line message ``<path>:<line>: <what is wrong>`` (1-based line numbers; JSON documents that
are not line-based name the entry instead); a missing file raises it naming the file. Text files
are read as UTF-8, optionally gzip-compressed (a ``.gz`` suffix); ``\\r\\n`` line endings and
blank lines are accepted. Corpora are streamed and never loaded whole.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from retrieval.errors import DatasetFormatError
from retrieval.types import Passage, Qrels, Queries, Run

_Lines = Iterator[tuple[int, str]]  # (1-based line number, line without its line ending)

_ID_NAMES = {"id", "_id", "docid", "doc_id", "pid"}
_TEXT_NAMES = {"text", "passage", "contents"}
_BEIR_QRELS_HEADER = ["query-id", "corpus-id", "score"]


# --------------------------------------------------------------------------------------------
# Low-level helpers


def _fail(path: Path, where: int | str | None, what: str) -> NoReturn:
    """Raise the module's one error shape: ``path:line: what`` (or ``path: entry: what``)."""
    if isinstance(where, int):
        raise DatasetFormatError(f"{path}:{where}: {what}")
    prefix = f"{path}: {where}" if where else str(path)
    raise DatasetFormatError(f"{prefix}: {what}")


def _show(value: object, limit: int = 60) -> str:
    """A short one-line rendering of a value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _check_file(path: Path) -> None:
    if not path.is_file():
        _fail(path, None, "file not found" if not path.exists() else "not a regular file")


def _lines(path: Path) -> _Lines:
    """Check now that ``path`` is a file; lazily yield its non-blank lines with their numbers."""
    path = Path(path)
    _check_file(path)
    return _read_lines(path)


def _read_lines(path: Path) -> _Lines:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    _fail(path, lineno, f"not valid UTF-8 (byte {e.start})")
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                if line.strip():
                    yield lineno, line
    except (OSError, EOFError) as e:  # e.g. a truncated or corrupt .gz file
        _fail(path, None, f"cannot read: {e}")


def _json_object(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        _fail(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})")
    if not isinstance(record, dict):
        _fail(path, lineno, f"expected a JSON object, got {type(record).__name__}")
    return record


def _field(path: Path, where: int | str, record: dict[str, Any], name: str, *, optional: bool = False) -> str:
    """A string field of a JSON record (integers, as some ids are written, are turned into strings)."""
    if record.get(name) is None:
        if optional:
            return ""
        _fail(path, where, f"missing field {name!r}" if name not in record else f"field {name!r} is null")
    value = record[name]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        _fail(path, where, f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _split_tsv(line: str) -> list[str]:
    """Split a line on tabs, honouring CSV quoting where the line uses it validly.

    NovelEval's ``corpus.tsv`` was written with CSV quoting: a field holding a tab or a quote is
    wrapped in double quotes with inner quotes doubled. MS MARCO files are unquoted, so a line
    whose quotes are not valid CSV quoting (``"a" vs "b"``) is split on raw tabs.
    """
    if '"' not in line:
        return line.split("\t")
    try:
        return next(csv.reader([line], delimiter="\t", strict=True))
    except csv.Error:
        return line.split("\t")


def _add_query(path: Path, where: int | str, queries: Queries, qid: str, text: str) -> None:
    if not qid.strip():
        _fail(path, where, "empty query id")
    if not text.strip():
        _fail(path, where, f"empty text for query {_show(qid)}")
    if qid in queries:
        _fail(path, where, f"duplicate query id {_show(qid)}")
    queries[qid] = text


def _add_qrel(path: Path, lineno: int, qrels: Qrels, qid: str, docid: str, relevance: str) -> None:
    try:
        value = int(relevance)
    except ValueError:
        _fail(path, lineno, f"relevance must be an integer, got {_show(relevance)}")
    judged = qrels.setdefault(qid, {})
    if docid in judged:
        _fail(path, lineno, f"duplicate judgement for query {_show(qid)} and docid {_show(docid)}")
    judged[docid] = value


# --------------------------------------------------------------------------------------------
# Corpora


def iter_beir_corpus(path: Path) -> Iterator[Passage]:
    """Stream the passages of a BEIR ``corpus.jsonl``.

    Format: one JSON object per line, ``{"_id": str, "title": str, "text": str, ...}``; ``title``
    may be missing, null or empty; other keys (``metadata``) are ignored. ``_id`` must be
    non-empty and unique in the file.
    """
    path = Path(path)
    return _beir_passages(path, _lines(path))


def _beir_passages(path: Path, lines: _Lines) -> Iterator[Passage]:
    seen: set[str] = set()
    for lineno, line in lines:
        record = _json_object(path, lineno, line)
        docid = _field(path, lineno, record, "_id")
        title = _field(path, lineno, record, "title", optional=True)
        text = _field(path, lineno, record, "text")
        yield _new_passage(path, lineno, seen, docid, title, text)


def _new_passage(path: Path, lineno: int, seen: set[str], docid: str, title: str, text: str) -> Passage:
    if not docid.strip():
        _fail(path, lineno, "empty docid")
    if docid in seen:
        _fail(path, lineno, f"duplicate docid {_show(docid)}")
    seen.add(docid)
    return Passage(docid=docid, title=title, text=text)


def iter_tsv_corpus(path: Path) -> Iterator[Passage]:
    """Stream the passages of a tab-separated corpus (MS MARCO ``collection.tsv`` style).

    Format: ``docid<TAB>text`` or ``docid<TAB>title<TAB>text`` per line; the first line fixes the
    column count and every line must have it. An optional header line is skipped when its columns
    are an id name (``id``, ``docid``, ``pid``, ...), optionally ``title``, and ``text``. Fields may
    use CSV quoting (see NovelEval's ``corpus.tsv``); surrounding whitespace is stripped.
    Docids must be non-empty and unique.
    """
    path = Path(path)
    return _tsv_passages(path, _lines(path))


def _is_tsv_header(fields: list[str]) -> bool:
    names = [field.strip().lower() for field in fields]
    return (
        len(names) in (2, 3)
        and names[0] in _ID_NAMES
        and names[-1] in _TEXT_NAMES
        and (len(names) == 2 or names[1] == "title")
    )


def _tsv_passages(path: Path, lines: _Lines) -> Iterator[Passage]:
    columns = 0
    seen: set[str] = set()
    for lineno, line in lines:
        fields = [field.strip() for field in _split_tsv(line)]
        if not columns:
            columns = len(fields)
            if columns not in (2, 3):
                _fail(path, lineno, f"expected 2 or 3 tab-separated columns (docid, [title,] text), got {columns}")
            if _is_tsv_header(fields):
                continue
        elif len(fields) != columns:
            _fail(path, lineno, f"expected {columns} tab-separated columns as on the first line, got {len(fields)}")
        title, text = (fields[1], fields[2]) if columns == 3 else ("", fields[1])
        yield _new_passage(path, lineno, seen, fields[0], title, text)


def iter_corpus(path: Path) -> Iterator[Passage]:
    """Stream a corpus given as a file or a dataset directory, choosing the reader by layout.

    A directory must hold ``corpus.jsonl`` (BEIR layout; preferred), ``corpus.tsv``, or TREC DL
    pools (see :func:`iter_dl_pool_corpus`); a file must
    end in ``.jsonl`` or ``.tsv`` (optionally ``.gz``). Anything else raises DatasetFormatError.
    """
    path = Path(path)
    if path.is_dir():
        for name, reader in (("corpus.jsonl", iter_beir_corpus), ("corpus.tsv", iter_tsv_corpus)):
            if (path / name).is_file():
                return reader(path / name)
        if _dl_pool_files(path):
            return iter_dl_pool_corpus(path)
        _fail(path, None, "directory holds neither corpus.jsonl, corpus.tsv nor TREC DL pools (*/retrieve_results_*.json)")
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return iter_beir_corpus(path)
    if name.endswith(".tsv"):
        return iter_tsv_corpus(path)
    _check_file(path)
    _fail(path, None, "unknown corpus format: expected a .jsonl or .tsv file or a dataset directory")


# --------------------------------------------------------------------------------------------
# Queries and topics


def read_beir_queries(path: Path) -> Queries:
    """Read a BEIR ``queries.jsonl``: one ``{"_id": str, "text": str, ...}`` object per line.

    Ids must be unique and texts non-empty; other keys (``metadata``) are ignored.
    """
    path = Path(path)
    queries: Queries = {}
    for lineno, line in _lines(path):
        record = _json_object(path, lineno, line)
        _add_query(path, lineno, queries, _field(path, lineno, record, "_id"), _field(path, lineno, record, "text"))
    return queries


def read_tsv_queries(path: Path) -> Queries:
    """Read ``qid<TAB>text`` lines (NovelEval ``queries.tsv``, MS MARCO / TREC DL topics).

    The text is everything after the first tab (a stray tab inside it becomes a space) and is
    stripped; ids must be unique and texts non-empty. Quotes are kept as written.
    """
    path = Path(path)
    return _tsv_queries(path, _lines(path))


def _tsv_queries(path: Path, lines: Iterable[tuple[int, str]]) -> Queries:
    queries: Queries = {}
    for lineno, line in lines:
        qid, tab, text = line.partition("\t")
        if not tab:
            _fail(path, lineno, "expected 'qid<TAB>text', found no tab")
        _add_query(path, lineno, queries, qid.strip(), text.replace("\t", " ").strip())
    return queries


_BLOCK_START = re.compile(r"^\s*<(top|doc)>\s*$", re.IGNORECASE)
_BLOCK_ID = re.compile(r"<num>\s*(?:Number:)?\s*(\S+)|<docno>\s*(.*?)\s*</docno>", re.IGNORECASE | re.DOTALL)
_BLOCK_TITLE = re.compile(r"<title>\s*(?:Topic:)?(.*?)(?=<|\Z)", re.IGNORECASE | re.DOTALL)
_TAGGED = re.compile(r"<docno>.*?</docno>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def read_trec_topics(path: Path) -> Queries:
    """Read a topics file in either format found under ``topics_qrels/topics``.

    - TSV, ``qid<TAB>text`` (MS MARCO, TREC DL and the gzipped BEIR ``*.tsv.gz`` topics), read as
      :func:`read_tsv_queries`;
    - SGML blocks, detected by a first line starting with ``<``: TREC ``<top> <num> Number: 301
      <title> ... </top>`` (the query is the title) or ``<DOC> <DOCNO> 1 </DOCNO> text </DOC>``
      (CACM; the query is the block's text). Whitespace inside a query is collapsed.

    The DPR NQ files (``question<TAB>['answers']``) carry no query ids and are not topics files.
    """
    path = Path(path)
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        return {}
    lines = itertools.chain([first], lines)
    return _sgml_topics(path, lines) if first[1].lstrip().startswith("<") else _tsv_queries(path, lines)


def _sgml_topics(path: Path, lines: _Lines) -> Queries:
    queries: Queries = {}
    tag, start, body = "", 0, []  # the open block's tag, first line and lines inside it
    for lineno, line in lines:
        if not tag:
            match = _BLOCK_START.match(line)
            if not match:
                _fail(path, lineno, f"expected <top> or <DOC>, got {_show(line.strip())}")
            tag, start, body = match.group(1), lineno, []
        elif _BLOCK_START.match(line):
            _fail(path, start, f"<{tag}> block is not closed before line {lineno}")
        elif line.strip().lower() == f"</{tag.lower()}>":
            block = "\n".join(body)
            found = _BLOCK_ID.search(block)
            if not found:
                _fail(path, start, f"<{tag}> block without <num> or <DOCNO>")
            title = _BLOCK_TITLE.search(block)
            text = title.group(1) if title else _TAGGED.sub(" ", block)
            _add_query(path, start, queries, found.group(1) or found.group(2), " ".join(text.split()))
            tag = ""
        else:
            body.append(line)
    if tag:
        _fail(path, start, f"<{tag}> block is never closed")
    return queries


# --------------------------------------------------------------------------------------------
# Relevance judgements


def read_beir_qrels(path: Path) -> Qrels:
    """Read a BEIR ``qrels/<split>.tsv``: ``query-id<TAB>corpus-id<TAB>score`` lines.

    The header line ``query-id corpus-id score`` is skipped; scores are integers (graded; 0 means
    judged not relevant). A (query, docid) pair may appear only once.
    """
    path = Path(path)
    qrels: Qrels = {}
    for lineno, line in _lines(path):
        fields = [field.strip() for field in line.split("\t")]
        if lineno == 1 and [field.lower() for field in fields] == _BEIR_QRELS_HEADER:
            continue
        if len(fields) != 3:
            _fail(path, lineno, f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(fields)}")
        _add_qrel(path, lineno, qrels, *fields)
    return qrels


def read_trec_qrels(path: Path) -> Qrels:
    """Read TREC qrels: ``qid Q0 docid relevance`` lines, whitespace-separated.

    The second column (``Q0`` or ``0``, the iteration) is ignored; relevance is an integer
    (graded, may be 0 or negative). A (query, docid) pair may appear only once.
    """
    path = Path(path)
    qrels: Qrels = {}
    for lineno, line in _lines(path):
        fields = line.split()
        if len(fields) != 4:
            what = "expected 4 whitespace-separated columns (qid, Q0, docid, relevance)"
            _fail(path, lineno, f"{what}, got {len(fields)}")
        _add_qrel(path, lineno, qrels, fields[0], fields[2], fields[3])
    return qrels


# --------------------------------------------------------------------------------------------
# TREC DL candidate pools


@dataclass(frozen=True)
class DLPool:
    """One retriever's top-k lists for TREC DL queries, with the passage text of every hit."""

    queries: Queries  # qid -> query text
    passages: dict[str, Passage]  # docid -> passage (title empty; MS MARCO passages have none)
    run: Run  # qid -> {docid: retriever score}


def read_dl_pool_json(path: Path) -> DLPool:
    """Read a TREC DL ``retrieve_results_<year>.json`` (rank_llm's format).

    Format: a JSON list with one entry per query, ``{"query": <query text>, "hits": [{"content":
    <passage text>, "qid": <int query id>, "docid": <str>, "rank": <int>, "score": <float>}]}``.
    The query id comes from the hits, so each entry needs at least one hit and all of its hits
    must share one qid; query ids are unique, a docid appears once per query, and a docid that
    recurs under another query must carry the same text. Errors name the 1-based entry and hit.
    """
    path = Path(path)
    _check_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        _fail(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})")
    except UnicodeDecodeError as e:
        _fail(path, None, f"not valid UTF-8 (byte {e.start})")
    if not isinstance(data, list):
        _fail(path, None, f"expected a JSON list of query entries, got {type(data).__name__}")
    queries: Queries = {}
    passages: dict[str, Passage] = {}
    run: Run = {}
    for i, entry in enumerate(data, 1):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            _fail(path, where, f"expected a JSON object, got {type(entry).__name__}")
        query = _field(path, where, entry, "query")
        hits = entry.get("hits")
        if not isinstance(hits, list) or not hits:
            _fail(path, where, "'hits' must be a non-empty list (the query id comes from the hits)")
        scores: dict[str, float] = {}
        qid = ""
        for j, hit in enumerate(hits, 1):
            where = f"entry {i}, hit {j}"
            if not isinstance(hit, dict):
                _fail(path, where, f"expected a JSON object, got {type(hit).__name__}")
            hit_qid = _field(path, where, hit, "qid")
            qid = qid or hit_qid
            if hit_qid != qid:
                _fail(path, where, f"qid {_show(hit_qid)} differs from the entry's qid {_show(qid)}")
            docid = _field(path, where, hit, "docid")
            text = _field(path, where, hit, "content")
            score = hit.get("score")
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                _fail(path, where, f"'score' must be a number, got {_show(score)}")
            if docid in scores:
                _fail(path, where, f"duplicate docid {_show(docid)} for query {_show(qid)}")
            known = passages.setdefault(docid, Passage(docid=docid, title="", text=text))
            if known.text != text:
                _fail(path, where, f"docid {_show(docid)} has a different text under an earlier query")
            scores[docid] = float(score)
        _add_query(path, f"entry {i}", queries, qid, query)
        run[qid] = scores
    return DLPool(queries=queries, passages=passages, run=run)


def _dl_pool_files(root: Path, split: str = "*") -> list[Path]:
    return sorted(root.glob(f"*/retrieve_results_{split}.json"))


def iter_dl_pool_corpus(root: Path, split: str = "*") -> Iterator[Passage]:
    """The union of the passages in a TREC DL directory's pools (``<retriever>/retrieve_results_<split>.json``).

    Pools are read in sorted path order; a docid seen in an earlier pool keeps that text. The
    pools of one year are small (~10k passages), so each file is read whole.
    """
    files = _dl_pool_files(Path(root), split)
    if not files:
        _fail(Path(root), None, f"no TREC DL pools */retrieve_results_{split}.json")
    seen: set[str] = set()
    for path in files:
        for docid, passage in read_dl_pool_json(path).passages.items():
            if docid not in seen:
                seen.add(docid)
                yield passage
