"""Connected components of graphs given by their arcs: the package's one connectivity routine.

Everything here delegates to :func:`scipy.sparse.csgraph.connected_components`.  The
per-column test of the identifiability report (is a column's "chosen over" graph strongly
connected?) is the one exception, compiled in ``_kernels.column_graphs``: it is a single
reachability pass per column over the column layout, where a graph for scipy would first
need every arc of every column as a global array (10^8 arcs for a GPT-2 sized vocabulary).
"""

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components


def components(n_nodes, src, dst, *, strong=False):
    """``(n_components, labels)`` of the graph with arcs ``src[i] -> dst[i]`` (weak components,
    direction ignored, unless ``strong``).  Node ids must be valid: callers check them."""
    # Boolean arcs: repeated arcs merge into one, never sum to a wrapped-around zero.
    graph = sparse.csr_array((np.ones(len(src), bool), (src, dst)), shape=(n_nodes, n_nodes))
    return connected_components(graph, directed=strong, connection="strong")


def closed_components(n_nodes, src, dst):
    """Strongly connected components and which of them are closed (no arc leaves them: the
    closed classes of a Markov chain, the groups of tokens that no outsider ever beat).

    Returns
    -------
    labels : ndarray of int, shape (n_nodes,)
    closed : ndarray of bool, shape (n_components,)
    """
    n_comp, labels = components(n_nodes, src, dst, strong=True)
    leaving = labels[src] != labels[dst]
    closed = np.ones(n_comp, bool)
    closed[labels[src[leaving]]] = False
    return labels, closed
