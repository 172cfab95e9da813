"""Suave: SwAV + labels (Fini et al., CVPR 2023, Sec. 3.2)."""
