"""Measures over the K samples of each question: semantic clusters, the similarity graph, SAR.

Pure numpy over a chunk's questions at once. Inputs, per question:

- ``matrix`` [n, K, K]: s(y_i, y_j) between samples under the configured similarity, in [0, 1];
  the diagonal is 1 (a sample is its own paraphrase, also an unparsed one: LM-Polygraph's NLI
  matrices have entail(y, y) close to 1 and its Laplacian measures divide by the degree);
- ``loglik`` [n, K]: each sample's log-likelihood, sum_t log p(y_i,t) over the scored span;
- ``drawn`` [n, K] bool: which samples exist (adaptive sampling and failed requests leave holes).
  Every measure runs over the drawn samples only; a question with none gets NaN.

Definitions are LM-Polygraph 0.7.0's (``lm_polygraph/estimators/``), higher = more uncertain:

- semantic entropy (``semantic_entropy.py``, Farquhar et al. 2024), entropy_estimation "mean":
  -(1/K) sum_j log P(C(j)), with P(C) = sum_{i in C} exp(loglik_i) (``sum``, not normalised, as
  LM-Polygraph) or |C| / K (``frequency``);
- eccentricity, degree and the Laplacian eigenvalue sum (``eccentricity.py``, ``deg_mat.py``,
  ``eig_val_laplacian.py``; Lin et al. 2023) over W = (S + S^T) / 2, L = I - D^-1/2 W D^-1/2;
- the number of semantic sets (``num_sem_sets.py``): connected components of the graph with an
  edge where entail > contra both ways. curate has no NLI model: entail = s and contra = 1 - s
  stand in, so an edge is s > 0.5 both ways; with answer similarity that is exactly the number of
  distinct answers, each unparsed sample a set of its own;
- sentence SAR (``sentence_sar.py``, Duan et al. 2024): -(1/K) sum_i log(p_i + sum_{j != i} p_j S_ij / t),
  p = exp(loglik), t = 0.001. LM-Polygraph's similarity there is a cross-encoder's; curate uses the
  configured similarity. As in LM-Polygraph, p underflows to 0 for long samples.

Clusters (semantic entropy): greedy, as LM-Polygraph's semantic classes are formed: each sample
joins the first earlier class whose first member it matches both ways (s > 0.5, as the number of semantic sets links them), else it
opens a new class. With answer similarity that is one class per parsed answer.
"""

from __future__ import annotations

import numpy as np

SAR_TEMPERATURE = 0.001  # LM-Polygraph's SentenceSAR.t
ECCENTRICITY_THRESHOLD = 0.9  # LM-Polygraph's Eccentricity(thres=0.9): eigenvalues below it are kept


def answer_matrix(sample_answers: np.ndarray) -> np.ndarray:
    """[n, K, K] answer similarity between samples: 1 where both were read and are equal; diagonal 1."""
    a = np.asarray(sample_answers)
    same = (a[:, :, None] == a[:, None, :]) & (a[:, :, None] >= 0)
    out = same.astype(np.float64)
    k = a.shape[1]
    out[:, np.arange(k), np.arange(k)] = 1.0
    return out


def clusters(matrix: np.ndarray, threshold: float) -> np.ndarray:
    """[n, K] class label per sample: the index of its class's first member (greedy, in sample order)."""
    n, k, _ = matrix.shape
    labels = np.full((n, k), -1, dtype=np.int64)
    for j in range(k):
        for r in range(j):  # classes are named by their first member r (labels[:, r] == r)
            joins = (labels[:, j] < 0) & (labels[:, r] == r) & (matrix[:, j, r] > threshold) & (matrix[:, r, j] > threshold)
            labels[joins, j] = r
        labels[labels[:, j] < 0, j] = j
    return labels


def _by_drawn(drawn: np.ndarray | None, n: int, k: int):
    """Groups of questions with the same number m of drawn samples: (rows, [len(rows), m] sample columns)."""
    if drawn is None or drawn.all():
        yield np.arange(n), np.broadcast_to(np.arange(k), (n, k))
        return
    m_of = drawn.sum(axis=1)
    order = np.argsort(~drawn, axis=1, kind="stable")  # drawn samples first, in their order
    for m in np.unique(m_of):
        rows = np.flatnonzero(m_of == m)
        if m > 0:
            yield rows, order[rows, :m]


def _gather(matrix: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return matrix[rows[:, None, None], columns[:, :, None], columns[:, None, :]]


def _per_group(fn, matrix: np.ndarray, drawn: np.ndarray | None, *vectors: np.ndarray) -> np.ndarray:
    """fn(sub_matrix [g, m, m], *sub_vectors [g, m]) -> [g], over the drawn samples of each question."""
    n, k = matrix.shape[:2]
    out = np.full(n, np.nan)
    for rows, columns in _by_drawn(drawn, n, k):
        if columns.shape[1] == k:
            out[rows] = fn(matrix[rows], *(v[rows] for v in vectors))
        else:
            out[rows] = fn(_gather(matrix, rows, columns), *(np.take_along_axis(v[rows], columns, axis=1) for v in vectors))
    return out


# --------------------------------------------------------------------------- answer similarity: closed forms
class AnswerClasses:
    """The samples' answer classes, over the drawn samples: what every measure needs under answer similarity.

    Under answer similarity the matrix is block-diagonal with all-ones blocks (one per parsed answer,
    one per unparsed sample), so the graph measures have closed forms in the class sizes c_j: the
    normalised Laplacian of a block of size c has eigenvalues 0 (once) and 1 (c - 1 times). With B
    the number of classes and m the samples drawn: the eigenvalue sum and the number of semantic sets
    are B, eccentricity is sqrt(B - 1) (one kept eigenvector per block, 1_C / sqrt(c)), the degree
    matrix is sum_j (m - c_j) / m^2. The parity tests check each against LM-Polygraph's eigh.
    """

    def __init__(self, sample_answers: np.ndarray, drawn: np.ndarray | None):
        a = np.asarray(sample_answers)
        n, k = a.shape
        self.all_drawn = drawn is None or bool(np.all(drawn))
        self.drawn = np.ones((n, k), dtype=bool) if drawn is None else np.asarray(drawn, dtype=bool)
        same = (a[:, :, None] == a[:, None, :]) & (a[:, :, None] >= 0)
        same[:, np.arange(k), np.arange(k)] = True
        if not self.all_drawn:
            same &= self.drawn[:, :, None] & self.drawn[:, None, :]
        self.same = same  # [n, K, K]: j and i are drawn and in one class
        self.counts = same.sum(axis=2)  # [n, K] c_j, 0 for a sample not drawn
        self.m = self.drawn.sum(axis=1)  # [n]

    def _over_drawn(self, per_sample: np.ndarray, mean: bool) -> np.ndarray:
        total = (per_sample if self.all_drawn else np.where(self.drawn, per_sample, 0.0)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = total / self.m if mean else total
        return np.where(self.m > 0, out, np.nan)

    def classes(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return self._over_drawn(1.0 / np.maximum(self.counts, 1), mean=False)

    def frequency_entropy(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return -self._over_drawn(np.log(self.counts / np.maximum(self.m, 1)[:, None]), mean=True)

    def sum_entropy(self, loglik: np.ndarray) -> np.ndarray:
        return -self._over_drawn(_class_logprob(self.same, loglik), mean=True)

    def degree(self) -> np.ndarray:
        m = self.m.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._over_drawn(m[:, None] - self.counts, mean=False) / m**2

    def eccentricity(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.classes() - 1.0, 0.0))

    def sentence_sar(self, loglik: np.ndarray) -> np.ndarray:
        p = np.exp(np.where(self.drawn, loglik, -np.inf))
        others = np.matmul(self.same.astype(np.float64), p[:, :, None])[:, :, 0] - p  # j != i in i's class
        with np.errstate(divide="ignore"):
            return self._over_drawn(-np.log(others / SAR_TEMPERATURE + p), mean=True)


# --------------------------------------------------------------------------- semantic entropy
def _class_logprob(same: np.ndarray, loglik: np.ndarray) -> np.ndarray:
    """[g, m] log P(C(j)) = logsumexp of the log-likelihoods of the samples i with same[:, j, i].

    Shifted by each class's own largest log-likelihood, so a class far less likely than another
    (long samples differ by hundreds of nats) does not underflow: one exp per sample, and the class
    sums as a batched product with the class matrix.
    """
    with np.errstate(invalid="ignore"):
        top = np.where(same, loglik[:, None, :], -np.inf).max(axis=2)  # [g, m] the max over j's class
    shift = np.where(np.isfinite(top), top, 0.0)
    p = np.exp(loglik - shift)  # each sample's p relative to its own class's max
    p = np.where(np.isnan(p) & ~np.isnan(loglik), 0.0, p)
    sums = np.matmul(same.astype(np.float64), np.where(same.any(axis=1), p, 0.0)[:, :, None])[:, :, 0]
    with np.errstate(divide="ignore"):
        return np.log(sums) + shift


def semantic_entropy(matrix: np.ndarray, loglik: np.ndarray | None, drawn: np.ndarray | None, threshold: float) -> np.ndarray:
    """-(1/K) sum_j log P(C(j)); ``loglik`` None: P(C) = |C| / K (LM-Polygraph's "frequency"), else the "sum" estimate."""

    def fn(sub: np.ndarray, *lik: np.ndarray) -> np.ndarray:
        labels = clusters(sub, threshold)
        if lik:
            class_lp = _class_logprob(labels[:, :, None] == labels[:, None, :], lik[0])
        else:
            counts = (labels[:, :, None] == labels[:, None, :]).sum(axis=2)
            class_lp = np.log(counts / labels.shape[1])
        return -class_lp.mean(axis=1)

    return _per_group(fn, matrix, drawn, *(() if loglik is None else (loglik,)))


# --------------------------------------------------------------------------- the similarity graph
def _laplacian(sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, L) with W = (S + S^T)/2 and L = I - D^-1/2 W D^-1/2, batched."""
    w = (sub + np.swapaxes(sub, 1, 2)) / 2
    inv_sqrt = 1.0 / np.sqrt(w.sum(axis=2))
    laplacian = np.eye(w.shape[1]) - inv_sqrt[:, :, None] * w * inv_sqrt[:, None, :]
    return w, laplacian


def _eccentricity(sub: np.ndarray) -> np.ndarray:
    # LM-Polygraph: U = || (-||v_l - mean(v_l)||)_l ||_2 over the eigenvectors v_l of L with
    # eigenvalue < thres. ||v - mean v||^2 = 1 - (1.v)^2 / m for a unit v, and the sum over the kept
    # eigenvectors is basis-free (the answer matrix has repeated eigenvalues), so it is computed so.
    _, laplacian = _laplacian(sub)
    values, vectors = np.linalg.eigh(laplacian)
    m = sub.shape[1]
    kept = values < ECCENTRICITY_THRESHOLD
    spread = 1.0 - vectors.sum(axis=1) ** 2 / m  # [g, m]: per eigenvector (columns of `vectors`)
    return np.sqrt(np.maximum(np.where(kept, spread, 0.0).sum(axis=1), 0.0))


def eccentricity(matrix: np.ndarray, drawn: np.ndarray | None = None) -> np.ndarray:
    return _per_group(_eccentricity, matrix, drawn)


def _degree(sub: np.ndarray) -> np.ndarray:
    w, _ = _laplacian(sub)
    m = sub.shape[1]
    return (m - w.sum(axis=2)).sum(axis=1) / m**2  # LM-Polygraph: trace(K - D) / K^2


def degree_matrix(matrix: np.ndarray, drawn: np.ndarray | None = None) -> np.ndarray:
    return _per_group(_degree, matrix, drawn)


def _eigenvalue_sum(sub: np.ndarray) -> np.ndarray:
    _, laplacian = _laplacian(sub)
    return np.maximum(0.0, 1.0 - np.linalg.eigvalsh(laplacian)).sum(axis=1)


def laplacian_eigenvalue_sum(matrix: np.ndarray, drawn: np.ndarray | None = None) -> np.ndarray:
    return _per_group(_eigenvalue_sum, matrix, drawn)


def _components(sub: np.ndarray) -> np.ndarray:
    edge = sub > 1.0 - sub  # entail > contra, with contra = 1 - s
    reach = (edge & np.swapaxes(edge, 1, 2)) | np.eye(sub.shape[1], dtype=bool)
    for _ in range(max(1, int(np.ceil(np.log2(max(sub.shape[1], 2)))))):  # transitive closure by squaring
        reach = np.matmul(reach.astype(np.int64), reach.astype(np.int64)) > 0
    return (1.0 / reach.sum(axis=2)).sum(axis=1)  # each component of size c counts c times 1/c


def num_semantic_sets(matrix: np.ndarray, drawn: np.ndarray | None = None) -> np.ndarray:
    return np.round(_per_group(_components, matrix, drawn))


def _sentence_sar(sub: np.ndarray, loglik: np.ndarray) -> np.ndarray:
    p = np.exp(loglik)
    off_diagonal = sub * (1.0 - np.eye(sub.shape[1]))
    relevance = (p[:, None, :] * off_diagonal).sum(axis=2) / SAR_TEMPERATURE
    with np.errstate(divide="ignore"):
        return (-np.log(relevance + p)).mean(axis=1)


def sentence_sar(matrix: np.ndarray, loglik: np.ndarray, drawn: np.ndarray | None = None) -> np.ndarray:
    return _per_group(_sentence_sar, matrix, drawn, loglik)
