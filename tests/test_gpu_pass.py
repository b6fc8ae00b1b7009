"""The GPU pass (issue 13) is smoke-tested here so GPU minutes are never spent on a typo."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_pass_smoke(tmp_path):
    r = subprocess.run([sys.executable, "tools/gpu_pass.py", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = json.loads((tmp_path / "gpu_pass.json").read_text())
    assert [s["stage"] for s in log["stages"]] == ["gan", "kernel"]
    assert all(s["rc"] == 0 for s in log["stages"])
    assert (tmp_path / "gan" / "default_generator.safetensors").is_file()
    assert (tmp_path / "gan" / "samples.png").is_file()
    assert log["gan"]["step"] == 2 and log["gan"]["generator_mib"] < 16
    from ganseg.checkpoints import load_generator

    G = load_generator(tmp_path / "gan" / "default_generator.safetensors")
    assert G.resolution == 64
    assert any((tmp_path / "kernel").iterdir())
