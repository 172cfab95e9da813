"""After pre-training: the release's two evaluation scripts on this project's ``src/``.

``eval_semisup.py`` fine-tunes a pretrained backbone (plus an MLP head) on 1%/10% of the labels or any
``--subset_file``; ``eval_linear.py`` trains a linear classifier on frozen, pooled features. Both follow the
release's files of the same names (SwAV lineage) for flags, defaults and arithmetic; what they share lives here:

- ``args``: the flags both scripts take beyond their own (data, backbone, run, distributed);
- ``backbone``: building ``--arch`` and loading ``--pretrained`` (this project's, SwAV's or DINO's files);
- ``models``: the fine-tuning network and the linear probe (the release's ``RegLog``);
- ``data``: the training and validation loaders;
- ``runner``: the epoch loop, validation, logging, atomic checkpoints and exact resume.
- ``knn``: DINO's weighted k-NN classifier and the sharded feature extraction of ``eval_knn.py``.
"""
