"""tools/gpu_pass.py on a bare copy, as the GPU machine runs it, so GPU minutes are never spent on a typo
or a missing import: the tree copied without `.git` (inside another git repository, whose commit must
not be reported), run by an interpreter that sees this venv's packages but not ganseg's install."""
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bare_copy(dst: Path) -> Path:
    """What the device tool carries: tracked files and untracked ones git does not ignore; no .git."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():  # deleted in the working tree: not carried
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def python_without_ganseg(tmp: Path) -> Path:
    """A venv whose sys.path holds this venv's site-packages minus ganseg (its package, dist-info and
    editable finder): symlinks in one folder named by a .pth line (a plain path: its own .pth files,
    such as the editable install's, are not run)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    view = tmp / "site-view"
    view.mkdir()
    for sp in map(Path, site.getsitepackages()):
        for entry in sp.iterdir():
            if "ganseg" not in entry.name.lower() and not entry.name.endswith(".pth") and \
                    not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    py = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "site_view.pth").write_text(str(view) + "\n")
    return py


def test_gpu_pass_bare_copy_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # an enclosing repository with a commit of its own: the copy must still report "unknown"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q", str(tmp_path)], check=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "enclosing"], cwd=tmp_path, check=True)
    tree = bare_copy(tmp_path / "tree")
    assert not (tree / ".git").exists() and (tree / "tools" / "gpu_pass.py").is_file()
    py = python_without_ganseg(tmp_path / "env")

    # the premise: this interpreter has torch but cannot import ganseg (the H200's failure)
    r = subprocess.run([py, "-c", "import torch; import ganseg"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'ganseg'" in r.stderr, r.stderr[-2000:]

    out = tmp_path / "out"
    r = subprocess.run([py, "tools/gpu_pass.py", "--smoke", "--out", str(out)], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = json.loads((out / "gpu_pass.json").read_text())
    assert [s["stage"] for s in log["stages"]] == ["profile", "gan", "export", "kernel", "gpu", "scaling"]
    assert all(s["rc"] == 0 for s in log["stages"]), log["stages"]
    assert log["environment"]["git_commit"] == "unknown"
    assert "(commit unknown)" in (out / "gpu_pass.md").read_text()

    # what comes back: <= 8 files, each <= 16 MiB, the exports among them
    files = sorted(p.name for p in out.iterdir())
    assert files == ["default_discriminator.safetensors", "default_generator.safetensors", "gpu_pass.json",
                     "gpu_pass.md", "results.tar.gz", "samples.png"]
    assert all((out / f).stat().st_size <= 16 * 2**20 for f in files) and log["limits"]["ok"]

    # the profile chose 64² (a CPU is far from 1 M images), and the run warm-started from the bundled default
    assert log["profile"]["chosen"] == 64 and "fallback 64²" in log["choice"]
    assert set(log["profile"]["rates"]) == {"128", "64"}
    assert log["gan"]["step"] == 2 and log["gan"]["resolution"] == 64
    assert [Path(p).name for p in log["gan"]["init"]] == ["default_generator.safetensors",
                                                          "default_discriminator.safetensors"]
    from ganseg.checkpoints import load_generator

    G = load_generator(out / "default_generator.safetensors")
    assert G.cfg == load_generator().cfg  # the bundled default's architecture, continued

    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"profile.txt", "profile.json", "gan/train_log.json", "logs/gan.log", "gpu/gpu.json"} <= names
        assert any(n.startswith("kernel/") for n in names)
        table = tar.extractfile("profile.txt").read().decode()
        logs = "".join(tar.extractfile(n).read().decode(errors="replace") for n in names if n.startswith("logs/"))
    assert "Self CPU time total" in table and "aten::" in table
    assert "ModuleNotFoundError" not in logs
