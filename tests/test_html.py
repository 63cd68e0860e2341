"""The HTML report: self-contained (no network), every result field shown, and it renders in Chromium."""

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gradcheck_kit.cli import main

DATA = Path(__file__).resolve().parent / "data"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and Path(p).exists()), None)


def _check_html(tmp_path, *files):
    page = tmp_path / "report.html"
    code = main(["check", *map(str, files), "--html", str(page)])
    return code, page, page.read_text(encoding="utf-8")


def test_page_is_self_contained_and_names_the_failing_input(tmp_path):
    code, page, text = _check_html(tmp_path, DATA / "padding_bug.py", DATA / "padding_ok.py")
    assert code == 1
    assert "padding_bug.py" in text and "padding_ok.py" in text and "MISMATCH" in text
    assert "border" in text  # the hint
    # nothing is fetched: no http(s) URL, no <link>, no <script src>
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
    assert "<link" not in text and "<script" not in text
    for col in ("max_abs_err", "manual_value", "reference_value", "mismatched", "atol", "rtol"):
        assert f"<th>{col}</th>" in text
    import torch

    from gradcheck_kit import check
    from gradcheck_kit.casefile import load_case

    case = load_case(DATA / "padding_bug.py")
    report = check(case.loss, case.make_inputs("cpu", torch.float64), case.manual, wrt=case.wrt)
    for key, value in report.results[0].to_dict().items():  # every field, whatever Result grows
        if value is not None and value != [] and value != {}:
            assert f"<th>{key}</th>" in text, key
    pytest.importorskip("matplotlib", reason="embedded pictures need the [plot] extra")
    (img,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_of_one_file_are_in_the_page_and_the_others_still_run(tmp_path, capsys):
    code, page, text = _check_html(tmp_path, tmp_path / "missing.py", DATA / "padding_ok.py")
    assert code == 2
    assert "missing.py" in text and "does not exist" in text and "padding_ok.py" in text


def test_sweep_html(tmp_path, capsys):
    page = tmp_path / "sweep.html"
    assert main(["sweep", "relu", "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "relu" in text and "rule samples passed" in text


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package 'chromium'); "
                                             "CI does not install it: 115 packages, ~480 MB on disk, for one test")
def test_page_renders_in_headless_chromium(tmp_path):
    code, page, _ = _check_html(tmp_path, DATA / "padding_bug.py")
    assert code == 1
    shot = tmp_path / "shot.png"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,800"]
    subprocess.run(base + [f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "padding_bug.py" in dom and ">x<" in dom  # the failing input's name, as rendered
    mpimg = pytest.importorskip("matplotlib.image", reason="reading the screenshot needs matplotlib")
    img = mpimg.imread(str(shot))[..., :3]
    assert img.shape[0] >= 700 and img.shape[1] >= 900
    assert float(img.std()) > 0.05, "the screenshot is blank"
    assert float((img.min(axis=2) < 0.5).mean()) > 0.005, "hardly any dark pixels: no text rendered"


def test_sweep_html_embeds_pictures_of_a_wrong_rule(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="embedded pictures need the [plot] extra")
    from gradcheck_kit.manual import registry

    rule = registry.get("relu")
    good = rule.backward_impl
    monkeypatch.setattr(rule, "backward_impl", lambda *a, **kw: tuple(None if g is None else 2 * g
                                                                         for g in good(*a, **kw)))
    page = tmp_path / "sweep.html"
    assert main(["sweep", "relu", "--html", str(page)]) == 1
    text = page.read_text(encoding="utf-8")
    assert "MISMATCH" in text and "constant factor 2" in text
    assert len(re.findall(r'src="data:image/png;base64,', text)) >= 2


def test_report_to_html_and_plot(tmp_path):
    import torch

    from gradcheck_kit import check, plot
    from gradcheck_kit.casefile import load_case

    case = load_case(DATA / "padding_bug.py")
    inputs = case.make_inputs("cpu", torch.float64)
    report = check(case.loss, inputs, case.manual, wrt=case.wrt)
    page = report.to_html(tmp_path / "r.html", title="padding bug")
    text = page.read_text(encoding="utf-8")
    assert "padding bug" in text and "MISMATCH" in text and "border" in text
    pytest.importorskip("matplotlib", reason="pictures need the [plot] extra")
    pairs = plot.gradient_pairs(case.loss, inputs, case.manual, wrt=case.wrt)
    (pic,) = report.plot(tmp_path / "pics", pairs)
    assert pic.path.exists()
    text = report.to_html(tmp_path / "r2.html", tensors=pairs).read_text(encoding="utf-8")
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 1
