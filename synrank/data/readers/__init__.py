"""Readers: the input formats users have, turned into the Parquet schemas of `synrank.data.schemas`.

Inputs (local paths or fsspec URLs such as ``s3://bucket/x``; ``.gz``/``.bz2``/``.xz``/``.zst``
text files are decompressed on the fly):

- a collection folder: BEIR (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) or one
  written by ``synrank data convert`` (``corpus.parquet``, ``queries.parquet``,
  ``qrels-<split>.parquet``); see `collection_file` for the names looked up and their order;
- JSONL: one JSON object per line; ids from ``_id``, ``query_id``/``doc_id`` or ``id`` (strings,
  or integers which become strings); ``text`` (queries also accept ``query``); corpus ``title``
  is optional; other fields (``metadata``) are ignored; blank lines are skipped;
- TREC topics: ``id<TAB>text`` lines (Anserini ``topics.*.txt``/``.tsv``, MS MARCO
  ``queries.tsv``) or classic SGML ``<top> <num> Number: 301 <title> ... </top>``;
- a corpus TSV: ``id<TAB>text`` (MS MARCO ``collection.tsv``) or ``id<TAB>title<TAB>text``;
- qrels: BEIR TSV with the header ``query-id<TAB>corpus-id<TAB>score`` (a file without a header
  is accepted when its first line is data), or TREC ``qid iter docid grade`` (whitespace);
- Parquet: one file or a folder of Parquet files (e.g. Ray Data output), conformed with
  `schemas.conform`.

Every problem is a `DataError` (a ValueError) naming the file and line (Parquet: the row), and a
missing file is a `MissingFileError` (also a FileNotFoundError). Readers only ever open files
for reading. Where continuing makes sense the problem is a counted `DataWarning` instead; every
such case is listed in the function's docstring.
"""

from synrank.data.errors import DataError, DataWarning, MissingFileError
from synrank.data.readers.collection import Collection, load_collection
from synrank.data.readers.corpus import iter_corpus, read_corpus
from synrank.data.readers.corpus_parts import CorpusPart, check_unique_doc_ids, iter_corpus_part, split_corpus
from synrank.data.readers.qrels import read_qrels
from synrank.data.readers.queries import read_queries
from synrank.data.readers.paths import available_splits, collection_file, guess_kind
from synrank.data.readers.tables import read_table

__all__ = [
    "Collection",
    "CorpusPart",
    "DataError",
    "DataWarning",
    "MissingFileError",
    "available_splits",
    "check_unique_doc_ids",
    "collection_file",
    "guess_kind",
    "iter_corpus",
    "iter_corpus_part",
    "load_collection",
    "read_corpus",
    "read_qrels",
    "read_queries",
    "read_table",
    "split_corpus",
]
