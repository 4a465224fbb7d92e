"""Data sets mlic makes itself, off the training path: the demo's shape scenes and the Fashion-MNIST collages."""
