"""The FRACTAL sentence scorer: an MLP trained so that its aggregated sentence scores reproduce response labels.

Input of a sentence: [its embedding s ; its response's context embedding c ; s ⊙ c]. The element-wise product hands
the MLP the sentence's relevance to the context directly (its sum is cos(s, c)); without it the MLP fit sentence
identities: sentence AUC on held-out tasks 0.57 instead of 0.73 (MIN data of experiments/fractal_synthetic.py,
seed 0, no pseudo-labels).
Output: sigmoid score, P(sentence good).
Loss per batch of responses:
  λ_bag · BCE(agg(sentence scores), response label)      the only signal the judge gives
+ λ_cos · BCE(score, (1 + cos(context, sentence)) / 2)    prior: a sentence about the question tends to be good
+ λ_corr · Σ r_ij (s_i − s_j)² / Σ r_ij                    prior: sentences whose embeddings correlate (Pearson
                                                          r_ij > 0) get similar scores, across responses
Then, optionally, max-likelihood pseudo-labelling (`aggregate.pseudo_labels`) and a fresh model trained on the
sentence pseudo-labels with the same priors: sentence targets are a sharper signal than one label per response.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.config import FractalConfig
from tunefold.errors import InputError
from tunefold.fractal.aggregate import pseudo_labels, soft_aggregate
from tunefold.io import atomic_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger("tunefold")
EPS = 1e-6


@dataclass
class BagData:
    """Responses as bags of sentences, flattened: what the scorer trains and predicts on."""

    sentences: torch.Tensor  # (N, d) unit-length sentence embeddings
    contexts: torch.Tensor  # (B, d) unit-length context embeddings, one per response
    bag_of: torch.Tensor  # (N,) index of each sentence's response
    labels: torch.Tensor  # (B,) response labels in [0, 1]; nan where the judge gave none

    @classmethod
    def build(cls, sentences: list[torch.Tensor], contexts: torch.Tensor, labels: list[float | None]) -> BagData:
        """From one (n_b, d) tensor per response (n_b >= 1), their contexts and labels."""
        import torch

        bag_of = torch.cat([torch.full((len(s),), b, dtype=torch.long) for b, s in enumerate(sentences)])
        lab = torch.tensor([float("nan") if y is None else float(y) for y in labels], dtype=torch.float32)
        return cls(torch.cat(sentences).float(), contexts.float(), bag_of, lab)

    def index(self) -> torch.Tensor:
        """(B, L) sentence indices of each response, padded with -1 to the longest response."""
        import torch

        counts = torch.bincount(self.bag_of, minlength=len(self.contexts))
        out = torch.full((len(self.contexts), int(counts.max())), -1, dtype=torch.long)
        order = torch.argsort(self.bag_of, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(order)) - starts[self.bag_of[order]]
        out[self.bag_of[order], pos] = order
        return out

    def prior(self) -> torch.Tensor:
        """(1 + cos(context, sentence)) / 2 for every sentence."""
        return (1 + (self.sentences * self.contexts[self.bag_of]).sum(-1)) / 2

    def features(self, rows: torch.Tensor) -> torch.Tensor:
        """[s ; c ; s ⊙ c] for the sentences `rows`."""
        import torch

        s, c = self.sentences[rows], self.contexts[self.bag_of[rows]]
        return torch.cat([s, c, s * c], dim=-1)


def mlp(input_dim: int, hidden_dim: int, layers: int) -> torch.nn.Module:
    """input → hidden → hidden/2 → ... (`layers` GELU layers, each half the last) → 1 logit."""
    import torch

    mods: list[torch.nn.Module] = []
    width = input_dim
    for i in range(layers):
        out = max(1, hidden_dim >> i)
        mods += [torch.nn.Linear(width, out), torch.nn.GELU()]
        width = out
    mods.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*mods)


class Scorer:
    """A trained MLP with what is needed to rebuild it; `predict` gives one score per sentence."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any]) -> None:
        self.model = model
        self.meta = meta

    def predict(self, data: BagData, batch: int = 4096) -> torch.Tensor:
        import torch

        self.model.eval()
        with torch.inference_mode():
            rows = torch.arange(len(data.sentences))
            out = [torch.sigmoid(self.model(data.features(r)).squeeze(-1)) for r in rows.split(batch)]
        return torch.cat(out) if out else torch.zeros(0)

    def save(self, path: Path) -> None:
        import torch

        # through a file object: torch names the archive after a path it is given, and the temporary file's random
        # name would make the same scorer a different file (and DVC re-run what depends on it)
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            torch.save({"state_dict": self.model.state_dict(), "meta": self.meta}, f)

    @classmethod
    def load(cls, path: Path) -> Scorer:
        import torch

        blob = torch.load(path, weights_only=True)
        meta = blob["meta"]
        model = mlp(meta["input_dim"], meta["hidden_dim"], meta["hidden_layers"])
        model.load_state_dict(blob["state_dict"])
        return cls(model, meta)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """A step of this MLP is a few small matrix products: extra threads cost more in synchronisation than they
    save (2 threads were 3x slower than 1 on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(data: BagData, cfg: FractalConfig, bags: torch.Tensor, targets: torch.Tensor | None) -> tuple[Any, float]:
    """One training run over the responses `bags`: bag loss against their labels, or, given per-sentence
    `targets` (pseudo-labels), sentence BCE in its place; the priors either way. Returns (model, last loss)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = mlp(3 * data.sentences.shape[1], cfg.hidden_dim, cfg.hidden_layers)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    index, prior = data.index(), data.prior()
    centred = data.sentences - data.sentences.mean(dim=1, keepdim=True)
    centred = F.normalize(centred, dim=-1)  # rows of Pearson correlations by a dot product
    model.train()
    epoch_loss = 0.0
    with _one_thread():
        for _ in range(cfg.epochs):
            epoch_loss, steps = 0.0, 0
            for chunk in bags[torch.randperm(len(bags), generator=gen)].split(cfg.batch_size):
                idx = index[chunk]
                mask = idx >= 0
                rows = idx[mask]
                logits = model(data.features(rows)).squeeze(-1)
                scores = torch.sigmoid(logits)
                loss = torch.zeros(())
                if targets is not None:
                    loss = loss + cfg.lambda_bag * F.binary_cross_entropy_with_logits(logits, targets[rows])
                elif cfg.lambda_bag:
                    padded = torch.zeros(mask.shape).masked_scatter(mask, scores)
                    agg = soft_aggregate(padded, mask, cfg.aggregation, cfg.temperature).clamp(EPS, 1 - EPS)
                    loss = loss + cfg.lambda_bag * F.binary_cross_entropy(agg, data.labels[chunk])
                if cfg.lambda_cos:
                    loss = loss + cfg.lambda_cos * F.binary_cross_entropy_with_logits(logits, prior[rows])
                if cfg.lambda_corr and len(rows) > 1:
                    weight = (centred[rows] @ centred[rows].T).clamp_min(0).fill_diagonal_(0)
                    gap = (scores[:, None] - scores[None, :]) ** 2
                    loss = loss + cfg.lambda_corr * (weight * gap).sum() / weight.sum().clamp_min(EPS)
                opt.zero_grad()
                loss.backward()
                opt.step()
                epoch_loss += loss.item()
                steps += 1
            epoch_loss /= max(steps, 1)
    return model, epoch_loss


def _meta(data: BagData, cfg: FractalConfig) -> dict[str, Any]:
    return {
        "input_dim": 3 * data.sentences.shape[1],
        "hidden_dim": cfg.hidden_dim,
        "hidden_layers": cfg.hidden_layers,
        "embedding_model": cfg.embedding_model,
        "aggregation": cfg.aggregation,
    }


def train_scorer(data: BagData, cfg: FractalConfig) -> tuple[Scorer, dict[str, Any]]:
    """Train on the labelled responses of `data`; deterministic given `cfg.seed` (on the same machine).

    All labels equal: the judge tells nothing about which sentence is better, so the bag loss is dropped with a
    warning and the scores come from the priors alone (an error if every prior weight is 0 too)."""
    import torch

    bags = torch.nonzero(~torch.isnan(data.labels)).squeeze(-1)
    if len(bags) == 0:
        raise InputError("no response has a usable judge label: nothing to learn sentence scores from")
    stats: dict[str, Any] = {"responses": len(bags), "sentences": int(torch.isin(data.bag_of, bags).sum())}
    distinct = torch.unique(data.labels[bags])
    stats["degenerate_labels"] = len(distinct) == 1
    if stats["degenerate_labels"]:
        if not cfg.lambda_cos:
            raise InputError(
                f"every response has the same label ({float(distinct[0])}) and fractal.lambda_cos is "
                "0: there is nothing to learn sentence scores from"
            )
        log.warning(
            "every response has the same label (%s): sentence scores come from the priors only, not from the judge",
            float(distinct[0]),
        )
        cfg = cfg.model_copy(update={"lambda_bag": 0.0, "pseudo_label": False})
    model, stats["loss"] = _fit(data, cfg, bags, None)
    scorer = Scorer(model, _meta(data, cfg))
    if cfg.pseudo_label:
        scores = scorer.predict(data)
        targets = torch.zeros(len(scores))
        flips = 0
        index = data.index()
        for b in bags.tolist():
            rows = index[b][index[b] >= 0]
            s = scores[rows].tolist()
            labels = pseudo_labels(s, float(data.labels[b]), cfg.aggregation)
            flips += sum(int(x >= 0.5) != y for x, y in zip(s, labels, strict=True))
            targets[rows] = torch.tensor(labels, dtype=torch.float32)
        model, stats["pseudo_label_loss"] = _fit(data, cfg, bags, targets)
        scorer = Scorer(model, _meta(data, cfg))
        stats["pseudo_label_flips"] = flips
    return scorer, stats
