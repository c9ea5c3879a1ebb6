"""`make bench` (`python -m benchmarks.bench`): how fast training, inference and packing run on this machine.

Everything is measured in ONE process on the machine it runs on. Every
training variant is built and warmed up first, then the variants take turns
over several rounds (the order reversed every other round), so each sees the
same machine; a figure is the median over the rounds, with the slowest and
fastest round beside it as its spread.

- train_img_s: the training step fit() runs (``gtsrb.train.TrainStep``) with
  its defaults: seed preset, batch 128, in-memory uint8 images -> augmentation
  -> forward, backward, optimizer step (random pixels: a step's cost does not
  depend on their values).
- train_variants_img_s: the same step with one option changed. ``stock`` runs
  plain ``torch.nn`` modules (no ``gtsrb.cpu_routes``); ``route_<name>`` one
  route alone; ``nchw`` the NCHW layout; ``fp32`` and ``bf16`` a precision
  forced; ``robust_aug`` the robustness augmentations on (darkening, blur, occlusion),
  ``framing`` the framing crop from 32 px frames, ``robust_framing`` both (their cost as
  ``augment_cost``: the share of a default step's time they add, issue 33's limit 10%).
  The variant whose
  options are the default's, spelled out (``default_twin``), is a check of the
  method: it must agree with train_img_s within the spread (default_agrees).
- naive_img_s: what most tutorials run, measured in the same rounds:
  torchvision.datasets.GTSRB over the extracted images, per-image PIL
  transforms in a DataLoader, the model in fp32; speedup_vs_naive.
- ceiling_img_s: the fp32 matrix-product rate measured now over the seed
  model's training FLOP per image; ratio_to_ceiling.
- infer_ms_p50/p99: one image through ``Classifier.predict`` with its SE
  excitations; eval_img_s: ``Classifier.predict_arrays`` over a batch of
  images, as ``gtsrb evaluate`` runs it.
- pack_s / pack_naive_s: packing the whole archive, against a plain
  sequential decode loop.
- machine: the CPU, the flags that decide the precision, cores and torch.

Modules: ``timing.py`` (the clock: matrix-product peaks, FLOP per image, runners timed in turn
with their spread), ``runners.py`` (what is timed: the training step and its variants, the naive
pipeline, inference, packing), ``cli.py`` (the figures of one run, the targets, the command).
"""
