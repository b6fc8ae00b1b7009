"""ganseg.export: models out of PyTorch — ONNX graphs, TensorRT engines, Triton repositories.

Installed as `ganseg.export` (the top-level `export/` folder), so no generic top-level module lands
in site-packages. Nothing here is imported by the training code or by `ganseg segment`.
"""
