"""The Parquet schemas every stage reads and writes (see DESIGN.md, "Stages and the data between them")."""

from __future__ import annotations

import pyarrow as pa

QUERIES = pa.schema([("query_id", pa.string()), ("text", pa.string())])

CORPUS = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])

LABEL_SOURCES = ("human", "llm", "synthetic")

QRELS = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("grade", pa.int32()),
        ("source", pa.string()),
    ]
)

SYNTHETIC_PASSAGES = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("level", pa.int8()),
        ("text", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("seed", pa.int64()),
        ("n_tokens", pa.int32()),
        ("finish_reason", pa.string()),
    ]
)

#: Optional column of synthetic passages, after the schema's: the query the passage was written for
#: (generate writes it; it differs from query_id for a "swap" level-0 passage, written at the top
#: level for a partner query). Files without it are read as "written for their own query".
WRITTEN_FOR = pa.field("for_query_id", pa.string())

#: Optional column of training groups, after the schema's: per passage, the id of another query it
#: was written for (a swap passage), else null. Training masks such a passage for that query.
ORIGINS = pa.field("origins", pa.list_(pa.string()))

#: Optional column of training groups built from real labels: the ids of every passage judged
#: relevant to the query (grade > 0), in the group or not. Training never uses one of them as an
#: in-batch negative of that query when it turns up in another query's group.
KNOWN_POSITIVES = pa.field("known_positives", pa.list_(pa.string()))

TRAINING_GROUPS = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("doc_ids", pa.list_(pa.string())),
        ("texts", pa.list_(pa.string())),
        ("grades", pa.list_(pa.float32())),
        ("sources", pa.list_(pa.string())),
    ]
)

BY_NAME: dict[str, pa.Schema] = {
    "queries": QUERIES,
    "corpus": CORPUS,
    "qrels": QRELS,
    "synthetic": SYNTHETIC_PASSAGES,
    "groups": TRAINING_GROUPS,
}


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Select and cast the schema's columns from table; extra columns are kept after them.

    Raises ValueError naming `where` (a file or stage) and the missing columns.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; expected {schema.names}")
    columns, fields = [], []
    for field in schema:
        col = table.column(field.name)
        if col.type != field.type:
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"{where}: column {field.name!r} has type {col.type}, expected {field.type}: {exc}") from exc
        columns.append(col)
        fields.append(field)
    for name in table.column_names:
        if name not in schema.names:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
