"""tools/adopt.py: the decision, and the whole adoption at the `tiny` budget in a copy of the tree whose
bundled default is replaced by an untrained generator (so the real default is the better candidate):
a candidate no better than the default changes nothing, a failure midway changes nothing, and an
adoption swaps in weights, default UNet, tables and cards."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_gpu_pass import bare_copy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import adopt  # noqa: E402


def q(fd: float, parts: float) -> dict:
    return {"fd_generated_vs_rendered": fd, "fd_rendered_vs_rendered": 0.01, "parts_found_generated": parts,
            "parts_found_rendered": 0.97, "n": 100, "resolution": 64}


@pytest.mark.parametrize("cand,default,better", [
    (q(0.5, 0.30), q(0.9, 0.20), True),
    (q(0.5, 0.20), q(0.9, 0.20), True),    # same parts share, lower distance
    (q(0.9, 0.30), q(0.9, 0.20), False),   # distance not lower
    (q(0.5, 0.10), q(0.9, 0.20), False),   # fewer images with all parts
    (q(0.9, 0.20), q(0.9, 0.20), False),   # the same generator
])
def test_decide(cand, default, better):
    ok, text = adopt.decide({"candidate": cand, "default": default})
    assert ok is better and text.startswith("better" if better else "not better")


def test_at_resolution_compares_at_the_lower_size():
    from ganseg.checkpoints import load_generator

    G = load_generator()
    small = adopt.AtResolution(G, 32)
    with torch.no_grad():
        img = small.synthesize(z=torch.randn(2, G.z_dim), truncation_psi=1.0, noise_mode="const")
    assert small.resolution == 32 and tuple(img.shape) == (2, 3, 32, 32)


def test_bad_input_is_one_line_before_any_work(tmp_path, capsys):
    weights = ROOT / "ganseg" / "weights"
    assert adopt.main([str(weights / "default_generator.safetensors"), str(weights / "default_unet.safetensors"),
                       "--work", str(tmp_path)]) == 2
    assert "not a ganseg discriminator file" in capsys.readouterr().err
    assert adopt.main([str(tmp_path), "--work", str(tmp_path)]) == 2  # a folder without checkpoint.pt
    assert "no checkpoint.pt" in capsys.readouterr().err
    assert not (tmp_path / "probe.json").exists()


def digest(root: Path, rels) -> dict:
    return {r: hashlib.sha256((root / r).read_bytes()).hexdigest() for r in rels}


def test_adopt_tiny_end_to_end(tmp_path):
    from safetensors.torch import save

    from ganseg.checkpoints import load_generator, save_generator
    from ganseg.stylegan2 import Discriminator, Generator
    from ganseg.unet import load_unet, save_unet

    tree = bare_copy(tmp_path / "tree")
    weights = tree / "ganseg" / "weights"
    good_g, good_d = ROOT / "ganseg/weights/default_generator.safetensors", ROOT / "ganseg/weights/default_discriminator.safetensors"
    # the copy's default becomes an untrained generator + discriminator of the same architecture
    G = load_generator(good_g)
    torch.manual_seed(0)
    save_generator(Generator(G.cfg), weights / "default_generator.safetensors", dtype=torch.float16)
    D = Discriminator(G.resolution, G.cfg.channels)
    (weights / "default_discriminator.safetensors").write_bytes(save(
        {k: v.half().contiguous() for k, v in D.state_dict().items()},
        metadata={"config": json.dumps({"resolution": G.resolution, "channels": G.cfg.channels})}))
    watched = [f"ganseg/weights/{n}" for n in adopt.SHIPPED] + [
        "README.md", "docs/default_generator.md", "docs/default_unet.md", "docs/fewshot.md",
        "benchmarks/results/autoshot_eval.json", "benchmarks/results/fewshot_eval.json"]
    before, main_before = digest(tree, watched), digest(ROOT, watched)

    def run(*args):
        return subprocess.run([sys.executable, "tools/adopt.py", *map(str, args), "--budget", "tiny",
                               "--work", str(tmp_path / "work")], cwd=tree, capture_output=True, text=True, timeout=300)

    # no better than the default (it is the default): said, exit 0, nothing changed
    r = run(weights / "default_generator.safetensors", weights / "default_discriminator.safetensors")
    assert r.returncode == 0 and "not better" in r.stdout and "nothing changed" in r.stdout, r.stdout + r.stderr
    assert digest(tree, watched) == before

    # a failure midway (the tables' script broken): nothing of weights, docs or results replaced
    script = tree / "benchmarks" / "autoshot_eval.py"
    original = script.read_text()
    script.write_text("raise SystemExit('broken on purpose')\n")
    r = run(good_g, good_d)
    assert r.returncode != 0 and "better:" in r.stdout and "unchanged" in r.stderr, r.stdout + r.stderr
    assert digest(tree, watched) == before
    script.write_text(original)

    # the real default as candidate: better by the probe, but its 2-step UNet loses to the shipped one
    r = run(good_g, good_d)
    assert r.returncode == 0 and "below the shipped default UNet" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert digest(tree, watched) == before
    # ... and against a shipped UNet that predicts one small class everywhere: adopted (the finished
    # jobs of the run above are reused: same candidate, same budget)
    shipped = load_unet(weights / "default_unet.safetensors")
    for prm in shipped.parameters():
        prm.data.zero_()
    shipped.head.bias.data[shipped.class_names.index("eyebrow")] = 1.0
    save_unet(shipped, weights / "default_unet.safetensors", shipped.class_names, extra={"resolution": G.resolution})
    before = digest(tree, watched)
    r = run(good_g, good_d)
    assert r.returncode == 0 and "adopted in" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    after = digest(tree, watched)
    assert all(after[w] != before[w] for w in watched), [w for w in watched if after[w] == before[w]]
    assert digest(ROOT, watched) == main_before  # the copy adopted into itself, not into this tree
    new_g = load_generator(weights / "default_generator.safetensors")
    assert all(torch.equal(a.half(), b.half()) for a, b in zip(new_g.state_dict().values(), G.state_dict().values()))
    summary = json.loads((tmp_path / "work" / "adopt.json").read_text())
    assert summary["not_rewritten"] == [] and summary["verdict"].startswith("better")
    probe = json.loads((tmp_path / "work" / "probe.json").read_text())
    card = (tree / "docs/default_generator.md").read_text()
    assert f"| {probe['candidate']['fd_generated_vs_rendered']:.2f} |" in card and "**Adopted " in card
    ae = json.loads((tree / "benchmarks/results/autoshot_eval.json").read_text())
    assert ae["config"]["unet_steps"] == adopt.BUDGETS["tiny"].unet_steps
    auto10 = next(r for r in ae["rows"] if r.get("family") == "auto" and r["shots"] == 10)
    readme = (tree / "README.md").read_text()
    summary = next(line for line in readme.splitlines() if line.startswith("| **auto-shot UNet**"))
    assert summary.endswith(f" | {auto10['miou_1000']:.3f} |"), summary
    assert (tree / "benchmarks/results/autoshot_eval.md").read_text().strip() in (tree / "docs/autoshot.md").read_text()
    assert int(load_unet(weights / "default_unet.safetensors").meta["step"]) == adopt.BUDGETS["tiny"].unet_steps


def test_full_budget_is_the_autoshot_recipe():
    """The full budget reruns the published tables: its numbers must be autoshot_eval's own defaults
    (a drift would make `make adopt` tables incomparable with the README's)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from autoshot_eval import AutoshotEvalConfig

    full, recipe = adopt.BUDGETS["full"], AutoshotEvalConfig()
    for name in ("n_test", "n_test_unet", "n_heldout", "invert_steps", "head_steps", "head_seeds", "synth_n",
                 "unet_steps"):
        assert getattr(full, name) == getattr(recipe, name), name
