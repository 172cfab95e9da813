"""FixMatch (Sohn et al., NeurIPS 2020): the semi-supervised yardstick of the Fashion-MNIST table."""
