"""huggingface_hub's private names (`xray_hf.seams.huggingface_hub`): none. The package imports only public
huggingface_hub names, so a private one cannot creep in unregistered."""

import ast
from pathlib import Path

import xray_hf
from xray_hf.seams.huggingface_hub import SEAMS


def test_the_package_uses_no_private_huggingface_hub_name():
    assert SEAMS == ()
    private = []
    for path in Path(xray_hf.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("huggingface_hub"):
                names = [alias.name for alias in node.names]
                if any(part.startswith("_") for part in node.module.split(".")) or any(n.startswith("_") for n in names):
                    private.append(f"{path.name}: from {node.module} import {', '.join(names)}")
            elif isinstance(node, ast.Import):
                private += [f"{path.name}: import {a.name}" for a in node.names
                            if a.name.startswith("huggingface_hub") and any(p.startswith("_") for p in a.name.split("."))]
    assert not private, private
