"""Fast device-id lookups with Arrow: millions of string keys without Python objects.

Converting 7 million Arrow-backed strings to numpy objects costs seconds; Arrow's hash kernels do
the same lookups in a fraction of that, which is what keeps the 10,000-device builds fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def arrow_strings(values: pd.Series | pd.Index | np.ndarray) -> pa.ChunkedArray:
    """Any string-like column as one Arrow large_string array (categoricals decoded)."""
    array = values if isinstance(values, pa.ChunkedArray) else pa.array(values)  # Arrow-backed: zero copy
    if isinstance(array, pa.Array):
        array = pa.chunked_array([array])
    if pa.types.is_dictionary(array.type):
        array = pa.chunked_array([chunk.dictionary_decode() for chunk in array.chunks], array.type.value_type)
    return pc.cast(array, pa.large_string())


def unique_ids(values: pd.Series | pd.Index | np.ndarray) -> pd.Index:
    """Sorted distinct non-null device ids, as a string Index."""
    distinct = pc.drop_null(pc.unique(arrow_strings(values)))
    return pd.Index(pd.array(distinct, dtype="string")).sort_values()


def positions(values: pd.Series | pd.Index | np.ndarray, ids: pd.Index) -> np.ndarray:
    """Position of each value in `ids` (int64), -1 where it is not there."""
    found = pc.index_in(arrow_strings(values), value_set=arrow_strings(ids).combine_chunks())
    return found.fill_null(-1).to_numpy().astype(np.int64)


def take_ids(ids: pd.Index, rows: np.ndarray) -> pd.arrays.ArrowStringArray:
    """ids[rows] as a string array, built in Arrow (a repeat of 10k ids to millions of rows)."""
    taken = arrow_strings(ids).take(pa.array(np.asarray(rows, dtype=np.int64)))
    return pd.array(taken, dtype="string")
