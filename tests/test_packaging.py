"""The package installs into a fresh virtual environment (not editable, through the project's constraints) and its
`megalodon-lit` command answers --help for every subcommand there."""
import shutil, subprocess, venv

import pytest

from conftest import ROOT
SUBCOMMANDS = ["demo", "train", "generate", "verify", "bench", "info"]


def test_fresh_venv_install_and_help(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # a copy of what the build needs, so the build cannot touch the working tree (egg-info, build/)
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"): shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "megalodon_lit", src / "megalodon_lit", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"), str(src)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    exe = env_dir / "bin" / "megalodon-lit"
    for cmd in [[]] + [[c] for c in SUBCOMMANDS]:
        r = subprocess.run([str(exe), *cmd, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0 and "usage: megalodon-lit" in r.stdout, (cmd, r.stderr[-2000:])
    # the installed package is the copy in the fresh environment, and it imports its public API
    r = subprocess.run([str(py), "-c", "import megalodon_lit as m; print(m.__file__); m.MegalodonForCausalLM(m.MegalodonConfig.from_preset('nano'))"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and str(env_dir) in r.stdout, r.stderr[-2000:]
