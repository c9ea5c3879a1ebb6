"""SE-VGG11 on GTSRB: pack, split, model, train, evaluate, predict."""

__version__ = "0.1.0"
