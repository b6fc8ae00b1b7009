"""ganseg.serving: Triton Inference Server models, the server launcher and the client.

Installed as `ganseg.serving` (the top-level `serving/` folder). The photo processing is the core's
`ganseg.pipeline` (imports and tests without Triton); only the `TritonPythonModel` classes need the
Python backend.
"""
