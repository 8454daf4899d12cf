"""Identifiability and existence diagnostics (THEORY.md section 4)."""

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components


class IdentifiabilityWarning(UserWarning):
    """Some logits are not identified, or the plain MLE does not exist, for some columns."""


def _chosen_over_graph(cd):
    """Arcs ``j -> y`` between the parameters of each column: ``y`` was emitted while ``j`` was
    available.  Returns a sparse adjacency matrix over all parameters."""
    lengths = np.diff(cd.indptr)
    row = np.repeat(np.arange(lengths.size), lengths)
    col = np.repeat(np.arange(cd.n_tokens), np.diff(cd.col_ptr))
    base = cd.id_ptr[col]
    src = base[row] + cd.local
    dst = (base + cd.local[cd.y_entry])[row]
    keep = src != dst
    n = cd.n_params
    return csr_matrix((np.ones(keep.sum(), np.int32), (src[keep], dst[keep])), shape=(n, n))


def mle_existence(cd):
    """Whether each column's finite MLE exists (``alpha=0``), and its never-chosen tokens.

    The MLE of a column is finite iff its "chosen over" graph is strongly connected
    (Ford's condition for Luce choice models).

    Returns
    -------
    exists : ndarray of bool, shape (K,)
        False for columns that are never queried.
    never_chosen : dict
        Column -> array of tokens that were available in the column but never emitted.
    """
    K = cd.n_tokens
    graph = _chosen_over_graph(cd)
    _, labels = connected_components(graph, directed=True, connection="strong")
    sizes = np.diff(cd.id_ptr)
    queried = sizes > 0
    exists = np.zeros(K, bool)
    starts = cd.id_ptr[:-1][queried]
    lo = np.minimum.reduceat(labels, starts) if starts.size else np.array([], int)
    hi = np.maximum.reduceat(labels, starts) if starts.size else np.array([], int)
    exists[queried] = lo == hi
    chosen = np.zeros(cd.n_params, bool)
    chosen[graph.indices] = True
    # A column with a single identified token (only the query) is trivially fine.
    never = ~chosen & (sizes[cd.id_query] > 1)
    never_chosen = {}
    for q in np.unique(cd.id_query[never]):
        never_chosen[int(q)] = cd.id_tokens[never & (cd.id_query == q)].astype(np.int64)
    return exists, never_chosen
