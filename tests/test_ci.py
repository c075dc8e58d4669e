"""CI's rules (``.ci/run``): a fresh clone's test run skips only what needs CUDA, and says what it skipped."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _check_skips():
    spec = importlib.util.spec_from_file_location("check_skips", ROOT / ".ci" / "check_skips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_fails_on_a_skip_that_is_not_needs_cuda(tmp_path, capsys):
    check = _check_skips()
    log = tmp_path / "log"
    log.write_text("....s\n=== short test summary info ===\n"
                   "SKIPPED [2] tests/test_cuda.py:7: needs CUDA\n")
    assert check.main(str(log)) == 0
    log.write_text(log.read_text()
                   + "SKIPPED [4] tests/test_pretrained_hub.py:24: could not import 'huggingface_hub'\n")
    assert check.main(str(log)) == 1
    out = capsys.readouterr()
    assert "huggingface_hub" in out.out and "not allowed" in out.out and "4 test(s)" in out.err


def _test_extra() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^test = \[(.*?)\]", text, re.S | re.M).group(1)
    return {re.split(r"[<>=;!~ \[]", name, maxsplit=1)[0].lower().replace("-", "_")
            for name in re.findall(r'"([^"]+)"', block)}


def test_the_test_extra_installs_every_package_a_test_imports_or_skips():
    needed = set()
    for path in (ROOT / "tests").glob("*.py"):
        needed |= {m.split(".")[0] for m in re.findall(r"importorskip\(\s*[\"']([\w.]+)", path.read_text())}
    needed |= {"scipy", "tensorboard", "huggingface_hub"}  # imported under try/except or importorskip
    assert needed <= _test_extra(), needed - _test_extra()


def test_cuda_skips_say_needs_cuda():
    for path in (ROOT / "tests").glob("*.py"):
        for reason in re.findall(r"cuda\.is_available\(\)[^)]*?reason=\"([^\"]+)\"", path.read_text(), re.S):
            assert "needs CUDA" in reason, (path.name, reason)


def test_ci_script_prints_skip_reasons_and_checks_them():
    runs = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python -m pytest")]
    assert len(runs) == 2 and all("-rs" in line and "tee" in line for line in runs)
    assert "check_skips.py" in (ROOT / ".ci" / "run").read_text()
