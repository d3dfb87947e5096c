"""Every module of the package names in `__all__` only what it defines, so `from xray_hf.<module> import *` works
(a name left behind when its object moved makes the star import raise)."""

import importlib
import pkgutil

import xray_hf


def test_every_name_in_every_modules_all_exists():
    missing = {}
    for info in pkgutil.walk_packages(xray_hf.__path__, "xray_hf."):
        module = importlib.import_module(info.name)
        names = [name for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
        if names:
            missing[info.name] = names
    assert not missing, f"__all__ names what the module does not define: {missing}"
    namespace: dict = {}
    exec("from xray_hf.modeling.compression import *", namespace)  # the star import the issue reported
    assert "XrayEmbeddingCompression" in namespace
