"""Area under the ROC curve, for scores that should separate two classes (e.g. particles from junk)."""
import numpy as np


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` separating ``labels`` True (positives) from False (Mann-Whitney)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = scores[labels], scores[~labels]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("the AUC needs both positives and negatives")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))
