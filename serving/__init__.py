"""ganseg.serving: Triton Inference Server models, the server launcher and the client.

Installed as `ganseg.serving` (the top-level `serving/` folder). The pre/post-processing transforms
import and test without Triton; only the `TritonPythonModel` classes need the Python backend.
"""
