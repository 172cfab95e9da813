"""Checkpoints: this project's run file (:mod:`.run_file`: the :class:`RunCheckpoint` type, its save and load),
importing weights from public SwAV/DINO files and released or other checkpoints (:mod:`.released`), the
Suave-Daino release's files as whole runs (:mod:`.release_files`), and reading and writing any checkpoint file
safely (:mod:`.files`: ``weights_only=True``, atomic writes)."""
from src.checkpoint.files import (CheckpointError, copy_snapshot, read_checkpoint, save_checkpoint_atomic,
                                  unwrap_module)
from src.checkpoint.release_files import (ReleaseRun, load_release_network, read_release_run, release_flags,
                                          release_method)
from src.checkpoint.released import (NETWORK_LOCATIONS, checkpoint_networks, extract_state_dict,
                                     flatten_projection_head, load_pretrained_backbone, load_pretrained_projection,
                                     resize_pos_embed, strip_wrapper_prefixes)
from src.checkpoint.run_file import LAYOUT_VERSION, RunCheckpoint, resuming_into

__all__ = ["CheckpointError", "LAYOUT_VERSION", "NETWORK_LOCATIONS", "ReleaseRun", "RunCheckpoint",
           "checkpoint_networks", "copy_snapshot", "extract_state_dict", "flatten_projection_head",
           "load_pretrained_backbone", "load_pretrained_projection", "load_release_network", "read_checkpoint",
           "read_release_run", "release_flags", "release_method", "resize_pos_embed", "resuming_into",
           "save_checkpoint_atomic", "strip_wrapper_prefixes", "unwrap_module"]
