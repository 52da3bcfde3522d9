"""Training data for VRT: official layouts, TFDS, embedded synthetic clips, degradations.

Modules: `pipeline` (grain loaders: make_train_loader, make_val_clips), `layouts` (folder readers),
`tfds_builders` (array_record builders), `synthetic` (clips from bundled photographs), `degrade`
(BI / BD / noise / motion blur), `imresize` (MATLAB-compatible bicubic), `testsets` (test sets).
Import the submodule you need; this package imports nothing heavy by itself.
"""
