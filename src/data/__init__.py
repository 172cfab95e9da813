"""Data layer of Suave and Daino: datasets, labelled lists, augmentations, Mixup/CutMix, loaders.

Contracts (the engine relies on them):

Layout and classes
    ``DATA/train/<class>/<image>``, ``DATA/val/<class>/<image>`` (ImageFolder). ``class_index(train_dir)``
    = sorted class folder names -> 0..K-1, one map for the unlabelled, labelled and val sets; a class in
    one split but not the other, an empty class folder, a listed file missing from train, a corrupt image:
    each raises ``DataError`` naming the path and the fix (a corrupt image names its file even from a
    DataLoader worker). Images are converted to RGB (grey -> 3 channels).

Own data (``sources``, docs/data.md)
    ``--unlab_dir``/``--unlab_list`` (no classes) + ``--lab_dir``/``--lab_csv`` (+ optional ``--val_dir``/``--val_csv``):
    ``build_own_datasets`` gives the same three sets (``val`` may be None), classes = the labelled source's sorted
    names; unlabelled images of unknown class have label -1. File lists cached by ``cached_file_lists``.
    ``bad_images``: unreadable training images replaced by the next readable one, named in ``batch.skipped``.

Labelled lists (``subsets``)
    ImageNet format ``n01440764_10026.JPEG`` (class = prefix before ``_``) or ``<class>/<file>``, per line.
    ``resolve_subset_file(data_path, labels_perc, subset_file)``: ``--subset_file`` as given, else
    ``{1,10}percent.txt`` from ``DATA/subsets/``, ``./subsets/``, the cache (sha256-checked) or a download
    of the SimCLR list (``fetch_url``, monkeypatchable). ``python -m src.data.make_subset`` writes a
    class-balanced list with a seed.

Items
    unlabelled ``(views: list[Tensor], label)``; labelled ``(image or list[Tensor] (repeated
    augmentation), label)``; val ``(image, label)``.

Batches (``collate``)
    ``LabelledBatch(images (L,C,H,W), targets (L,) long | (L,K) float, labels (n_clean,) long, n_clean)``;
    ``UnlabelledBatch(views, labels, mixed_views, mix_lams, mix_pairs, mix_target_pairs)``: mixed_views[j]
    = mix of views[a] and views[b].flip(0) with weight mix_lams[j], (a, b) = mix_pairs[j]; its target is
    lam * q_s + (1 - lam) * q_t.flip(0) with (s, t) = mix_target_pairs[j], indices into the assigned
    crops (always (0, 1), as the release). Both have ``.to(device)`` and ``.pin_memory()``. See
    ``src.data.collate`` for extend/replace and the ``n_clean`` rule.

Loaders (``loaders``)
    ``build_unlabelled_loader(...)``: DistributedSampler (shuffle with ``order_seed``, drop_last); call
    ``loader.sampler.set_epoch(epoch)``. ``InfiniteLabelledLoader(...)``: ``next(loader)`` forever; pass p
    reshuffles with order_seed + p (``order_seed`` defaults to ``seed``), disjoint across ranks (DistributedSampler padding), incomplete last batch of
    a pass dropped (as the release); ``state_dict() -> {"pass", "offset"}`` counts batches returned to the
    caller, ``load_state_dict`` resumes exactly. ``build_val_loader(...)``: rank shards, no duplicates.
    Augmentation randomness is seeded per sample from (seed, stream, epoch/pass, rank, index): runs with
    one seed see the same batches whatever the number of workers.
"""
import importlib
from typing import Any

# Exports are imported on first use (PEP 562), so that `python -m src.data.fashion_mnist` and
# `python -m src.data.make_subset` start without importing torch.
_EXPORTS = {
    "collate": ["LabelledBatch", "LabelledCollate", "UnlabelledBatch", "UnlabelledCollate", "stack_labelled"],
    "bad_images": ["BadImageTracker", "SkipBadImages", "SkippedCollate"],
    "datasets": ["ImageDataset", "SemiSupervisedData", "build_datasets", "build_own_datasets"],
    "errors": ["DataError", "ImageLoadError"],
    "folders": ["check_same_classes", "class_index", "scan_image_folder"],
    "images": ["load_rgb"],
    "loaders": ["InfiniteLabelledLoader", "build_unlabelled_loader", "build_val_loader"],
    "mixup": ["MixParams", "apply_mix", "one_hot", "sample_mix_params", "soft_mixed_labels"],
    "sources": ["FileLists", "OwnDataSpec", "build_file_lists", "cached_file_lists", "scan_images"],
    "subsets": ["IMAGENET_SUBSET_SHA256", "fetch_imagenet_subset", "labelled_samples", "read_subset_entries",
                "resolve_subset_file"],
    "synthetic": ["OwnLayoutPaths", "SyntheticPaths", "make_synthetic_imagefolder", "make_synthetic_own_layout"],
    "transforms": ["DINO_NORMALIZATION", "DINO_STD", "IMAGENET_MEAN", "SWAV_NORMALIZATION", "SWAV_STD",
                   "Normalization", "dino_multicrop", "labelled_transform", "swav_multicrop", "val_transform",
                   "weak_strong_views"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
