"""fastsync.tools.extra_imports: `fastsync warmup` names the packages diffusers pulled in
that fastsync never uses, and says nothing when there are none."""

from __future__ import annotations

import sys
import types

from fastsync.tools import extra_imports


def test_packages_imported_are_named_by_their_distribution(monkeypatch):
    for name in extra_imports.EXTRA:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert extra_imports.imported() == [] and extra_imports.hint() is None
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "transformers", types.ModuleType("transformers"))
    assert extra_imports.imported() == ["transformers", "scikit-learn"]
    assert extra_imports.hint().startswith("diffusers imported transformers, scikit-learn, installed here")


def test_a_package_blocked_in_sys_modules_is_not_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # what `import scipy` then refuses
    assert "scipy" not in extra_imports.imported()


def test_hidden_packages_look_uninstalled_inside_and_come_back_after(tmp_path, monkeypatch):
    import importlib.util

    import pytest

    (tmp_path / "fastsync_standin.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fastsync_standin", raising=False)
    with extra_imports.hidden(("fastsync_standin", "sys")) as blocked:
        assert blocked == ["fastsync_standin"]  # one already imported is left alone
        assert importlib.util.find_spec("fastsync_standin") is None
        with pytest.raises(ImportError):
            import fastsync_standin  # noqa: F401
    assert "fastsync_standin" not in sys.modules and sys.modules["sys"] is sys
    import fastsync_standin

    assert fastsync_standin.VALUE == 1
