import pickle

import pytest
import torch
from torch import nn

from deepscope import __version__
from deepscope.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"deepscope {__version__}"


def test_layers_of_a_torchvision_model(capsys):
    assert main(["layers", "torchvision:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1.conv2" in out and "Conv2d" in out
    assert "1×512×7×7" in out and "1×1000" in out
    assert "total parameters: 11,689,512" in out


def test_unknown_torchvision_model_suggests(capsys):
    assert main(["layers", "torchvision:resnet19"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown torchvision model 'resnet19'") and "resnet18" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_bad_spec_is_one_line(capsys):
    assert main(["layers", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "valid forms" in err and err.count("\n") == 1


def test_factory_and_torchscript_and_checkpoint(tmp_path, capsys, monkeypatch):
    pkg = tmp_path / "mymodels.py"
    pkg.write_text(
        "import torch.nn as nn\ndef tiny():\n    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["layers", "mymodels:tiny", "--input-shape", "5,3"]) == 0
    out = capsys.readouterr().out
    assert "5×4" in out and "5×2" in out

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    scripted = tmp_path / "tiny.pt"
    torch.jit.script(model).save(str(scripted))
    assert main(["layers", str(scripted)]) == 0
    assert "Linear" in capsys.readouterr().out

    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    assert main(["layers", "mymodels:tiny", "--weights", str(good)]) == 0
    capsys.readouterr()


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_unsafe_checkpoint_is_refused_without_trust(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}, "extra": Payload()}, bad, pickle_module=pickle)
    assert main(["layers", "torchvision:resnet18", "--weights", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "--trust-checkpoint" in captured.err
    assert "pickled code ran" not in captured.out


def test_report_command_on_missing_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err


def test_unknown_demo(capsys):
    assert main(["demo", "toy3d"]) == 2
    assert "toy2d" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    with pytest.raises(KeyError):
        main(["--debug", "demo", "toy3d"])


def test_demo_quick_via_cli(tmp_path, capsys):
    assert main(["demo", "toy2d", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "toy2d" / "report.html"
    assert "report:" in out and report.exists()


def test_the_tour_writes_one_report_in_the_order_the_demos_ran(tour_root):
    page = (tour_root / "report.html").read_text()  # the session's quick tour, as `deepscope demo --quick` runs it
    toy, shapes = page.index("toy2d · The task"), page.index("shapes · Why did the model predict this?")
    assert toy < shapes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["layers", "torchvision:resnet18", "--input-shape", "1,3,x"], "not a shape of positive integers"),
        (["layers", "torchvision:resnet18", "--input-shape", "1,3"], "the model failed on an input of shape 1×3"),
        (["layers"], "Missing argument"),
        (["demo", "--bogus"], "No such option"),
    ],
)
def test_usage_errors_are_one_line(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_no_arguments_prints_help(capsys):
    assert main([]) == 0
    assert "Commands" in capsys.readouterr().out


@pytest.fixture
def two_images_and_a_cnn(tmp_path, monkeypatch):
    """An importable model factory ``cnnmod:tiny`` and two PNG files, one with HTML in its name."""
    import numpy as np
    from PIL import Image

    (tmp_path / "cnnmod.py").write_text(
        "import torch.nn as nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "<b>.png"):
        paths.append(tmp_path / name)
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_explain_writes_maps_figure_and_page(tmp_path, two_images_and_a_cnn):
    import numpy as np

    out = tmp_path / "out"
    args = [
        "explain",
        "cnnmod:tiny",
        *map(str, two_images_and_a_cnn),
        "-m",
        "saliency",
        "--size",
        "32",
        "--out",
        str(out),
    ]
    assert main([*args, "--target", "2", "-p", "absolute=false"]) == 0
    assert {p.name for p in out.iterdir()} == {"saliency.png", "saliency.npz", "explain.html"}
    saved = np.load(out / "saliency.npz")
    assert saved["maps"].shape == (2, 3, 32, 32) and (saved["maps"] < 0).any()  # absolute=false: signed
    page = (out / "explain.html").read_text()
    assert "&lt;b&gt;.png" in page and "<b>.png" not in page  # file names are escaped
    assert "{&#39;absolute&#39;: False}" in page  # the parameters used, escaped


def test_compare_records_a_run_and_writes_its_page(tmp_path, two_images_and_a_cnn, capsys):
    from deepscope.store import RunReader

    out = tmp_path / "cmp"
    args = ["compare", "cnnmod:tiny", *map(str, two_images_and_a_cnn), "-m", "saliency,gradcam", "--size", "32"]
    assert main([*args, "--metrics", "deletion,insertion,sanity", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "method=saliency" in printed and "method=gradcam" in printed and "sanity=" in printed
    with RunReader(out / "attribution") as reader:
        assert reader.meta()["attribution/methods"] == ["saliency", "gradcam"]
        assert reader.tensor("attribution/gradcam/maps", 0).shape == (2, 32, 32)
    page = (out / "report.html").read_text()
    assert "deletion AUC (lower is better)" in page and "Sanity check" in page
    assert main([*args, "--metrics", "accuracy", "--out", str(out)]) == 2
    assert "unknown metric(s) ['accuracy']" in capsys.readouterr().err


def test_explain_bad_parameter_is_one_line(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    assert main(["explain", "torchvision:resnet18", str(tmp_path / "x.png"), "-m", "saliency", "-p", "steps=3"]) == 2
    err = capsys.readouterr().err
    assert "has no parameter 'steps'" in err and err.count("\n") == 1
