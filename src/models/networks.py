"""Whole networks for the two methods: backbone + head, with multi-crop forwarding.

- `SwAVNetwork` (Suave): backbone -> projection MLP -> L2 normalise -> prototypes (linear, no
  bias), plus the optional online linear probes of the Suave release (`multihead_eval`,
  `ensemble_eval`).
- `DINONetwork` (Daino): backbone -> `DINOHead`.

Both take a list of crops and run the backbone once per run of consecutive crops of equal
spatial size (DINO's MultiCropWrapper), then the head once on all features, in input order,
and both return a `NetworkOutput`: its `scores` are the class scores either method trains on.

Teacher / EMA copies: build a second network with the same constructors (for Daino, the teacher
backbone without drop path, as the releases do) and `load_state_dict(student.state_dict())`; the
weight-normalised last layer's keys (`parametrizations.weight.original0/1`) load like any other.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.errors import FlagError

from .heads import DINOHead, build_projection_head, normalize_hidden_mlp

Crops = Union[torch.Tensor, Sequence[torch.Tensor]]


def _as_crop_list(crops: Crops) -> list[torch.Tensor]:
    if isinstance(crops, torch.Tensor):
        crops = [crops]
    crops = list(crops)
    if not crops:
        raise ValueError("expected at least one batch of crops, got an empty list")
    for i, crop in enumerate(crops):
        if not isinstance(crop, torch.Tensor) or crop.ndim != 4:
            shape = tuple(crop.shape) if isinstance(crop, torch.Tensor) else type(crop).__name__
            raise ValueError(f"crop {i}: expected a (B, C, H, W) tensor, got {shape}")
    return crops


def resolution_groups(crops: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive crops sharing the same (H, W)."""
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or crops[i].shape[-2:] != crops[start].shape[-2:]:
            groups.append((start, i))
            start = i
    return groups


def forward_by_resolution(backbone: nn.Module, crops: Crops) -> torch.Tensor:
    """Backbone features of all crops, concatenated in input order (N = sum of batch sizes).

    Consecutive crops of equal size are concatenated and go through the backbone in one call
    (DINO's MultiCropWrapper groups by width with torch.unique_consecutive; grouping by (H, W)
    is the same for square crops and also correct for non-square ones).
    """
    crops = _as_crop_list(crops)
    outputs = [backbone(torch.cat(crops[s:e]) if e - s > 1 else crops[s]) for s, e in resolution_groups(crops)]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def is_head_parameter(name: str) -> bool:
    """True for parameters of the projection head or the prototypes (also under a DDP `module.`
    prefix): the only ones that learn during `--warmup_proj_nepochs`, as in the Suave release."""
    parts = name.split(".")
    return "projection_head" in parts or "prototypes" in parts


class NetworkOutput(NamedTuple):
    """Outputs of `SwAVNetwork.forward` and `DINONetwork.forward`.

    embedding: (N, feat_dim) projection output, L2-normalised when `normalize` (SwAVNetwork: what the
        SwAV queue stores); None for DINONetwork.
    scores: (N, K) class scores: the prototype scores `prototypes(embedding)` (None when a SwAVNetwork
        has no prototypes), or the DINO head's outputs.
    probe_logits: online probe logits on the first `probe_rows` rows, one per projection stage
        (when multihead_eval), then the ensemble classifier (when ensemble_eval); see
        `SwAVNetwork.probe_names`. Empty for DINONetwork.
    """

    embedding: Optional[torch.Tensor]
    scores: Optional[torch.Tensor]
    probe_logits: list[torch.Tensor]


class SwAVNetwork(nn.Module):
    """Suave / SwAV network: backbone -> projection MLP -> L2 norm -> prototypes (+ online probes).

    Args:
        backbone: module with `num_features`, mapping images to (B, num_features).
        hidden_mlp: hidden widths of the projection MLP; [0] or [] for a linear projection.
        feat_dim: embedding size; 0 means no projection head (prototypes on the backbone features;
            `hidden_mlp` is then ignored, as SwAV ignores it when output_dim is 0).
        nmb_prototypes: number of prototypes K (the number of classes for Suave); 0 for none.
        normalize: L2-normalise the embedding before the prototypes.
        multihead_eval: one linear probe per projection stage (the Suave release's
            `online_eval_multi`), each on the DETACHED stage output: the backbone features, each
            hidden layer's output after its ReLU, the final projection output (before the L2
            normalisation, as the release).
        ensemble_eval: one more linear classifier on the concatenation of all stages' outputs.
        bn_ensemble: BatchNorm1d before the ensemble classifier.
        detach_ensemble: the ensemble classifier sees detached features (a pure probe). False lets
            its loss train the backbone and projection head too.
        num_classes: outputs of the probes; defaults to nmb_prototypes.

    Probes see only the first `probe_rows` rows of the batch (default: the rows of the first crop,
    the labelled images when called as `net([labelled] + unlabelled_crops)`, as the release).

    Attributes used by the training engine: `backbone`, `projection_head` (nn.Sequential, empty
    when feat_dim == 0), `prototypes` (nn.Linear without bias, or None), `cls_heads` (probes),
    `cls_ensemble` (or None), `probe_names`, `head_parameter_names()`, `normalize_prototypes()`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        hidden_mlp: int | Sequence[int],
        feat_dim: int,
        nmb_prototypes: int,
        normalize: bool = True,
        multihead_eval: bool = False,
        ensemble_eval: bool = False,
        bn_ensemble: bool = False,
        detach_ensemble: bool = True,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(nmb_prototypes, int) or nmb_prototypes < 0:
            raise FlagError(f"--nmb_prototypes must be a non-negative int, got {nmb_prototypes!r}")
        if feat_dim < 0:
            raise FlagError(f"--feat_dim must be >= 0 (0: no projection head), got {feat_dim}")
        num_features = getattr(backbone, "num_features", None)
        if not isinstance(num_features, int):
            raise ValueError("the backbone needs an int attribute `num_features` (build it with build_backbone)")
        self.backbone = backbone
        self.normalize = normalize
        self.detach_ensemble = detach_ensemble

        hidden = normalize_hidden_mlp(hidden_mlp) if feat_dim > 0 else []
        if feat_dim > 0:
            self.projection_head = build_projection_head(num_features, hidden, feat_dim)
            stage_dims = [num_features, *hidden, feat_dim]
            self.probe_names = ["bbone", *[f"proj_{i}" for i in range(len(hidden))], "proj_last"]
        else:
            self.projection_head = nn.Sequential()
            stage_dims = [num_features]
            self.probe_names = ["bbone"]
        self.embed_dim = stage_dims[-1]

        self.prototypes = nn.Linear(self.embed_dim, nmb_prototypes, bias=False) if nmb_prototypes > 0 else None

        n_cls = nmb_prototypes if num_classes is None else num_classes
        if (multihead_eval or ensemble_eval) and n_cls <= 0:
            raise FlagError("--multihead_eval / --ensemble_eval need num_classes > 0 (or nmb_prototypes > 0)")
        self.cls_heads = nn.ModuleList(nn.Linear(d, n_cls) for d in stage_dims) if multihead_eval else nn.ModuleList()
        if not multihead_eval:
            self.probe_names = []
        self.cls_ensemble: nn.Module | None = None
        if ensemble_eval:
            classifier = nn.Linear(sum(stage_dims), n_cls)
            self.cls_ensemble = (
                nn.Sequential(nn.BatchNorm1d(sum(stage_dims)), classifier) if bn_ensemble else classifier
            )
            self.probe_names = [*self.probe_names, "ensemble"]

    def head_parameter_names(self) -> list[str]:
        """Names (as in `named_parameters()`) of the projection head's and prototypes' parameters."""
        return [name for name, _ in self.named_parameters() if is_head_parameter(name)]

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise the prototype rows in place (before every step, as SwAV)."""
        if self.prototypes is not None:
            w = self.prototypes.weight
            w.copy_(F.normalize(w.data, dim=1, p=2))

    def forward_head(self, features: torch.Tensor, probe_rows: int | None = None) -> NetworkOutput:
        """Projection, normalisation, prototypes and probes on backbone features (N, num_features)."""
        rows = features.shape[0] if probe_rows is None else probe_rows
        stages = [features]
        x = features
        for layer in self.projection_head:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                stages.append(x)
        if len(self.projection_head) > 0:
            stages.append(x)

        probe_logits = [probe(stage[:rows].detach()) for probe, stage in zip(self.cls_heads, stages)]
        if self.cls_ensemble is not None:
            joined = torch.cat([stage[:rows] for stage in stages], dim=1)
            probe_logits.append(self.cls_ensemble(joined.detach() if self.detach_ensemble else joined))

        embedding = F.normalize(x, dim=1, p=2) if self.normalize else x
        scores = self.prototypes(embedding) if self.prototypes is not None else None
        return NetworkOutput(embedding, scores, probe_logits)

    def forward(self, crops: Crops, probe_rows: int | None = None) -> NetworkOutput:
        """crops: a tensor or a list of (B_i, 3, H_i, W_i) tensors. Rows of the outputs follow the
        input order. `probe_rows` defaults to the batch size of the first crop."""
        crops = _as_crop_list(crops)
        features = forward_by_resolution(self.backbone, crops)
        rows = crops[0].shape[0] if probe_rows is None else probe_rows
        return self.forward_head(features, probe_rows=rows)


class DINONetwork(nn.Module):
    """Daino / DINO network: backbone -> DINOHead; forward(crops).scores: the (N, out_dim) logits."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Crops) -> NetworkOutput:
        return NetworkOutput(None, self.head(forward_by_resolution(self.backbone, crops)), [])
