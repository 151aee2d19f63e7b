"""Let torchvision import in an environment where its compiled ops cannot load (``make setup-vllm`` on CPU).

vLLM's CPU build pins ``torch==2.13.0+cpu``; the only torchvision release for torch 2.13.0 on PyPI (0.28.0) is the
CUDA build, whose ``_C.so`` needs ``libc10_cuda.so``. torchvision is meant to import without its ops (every op
registration checks ``torchvision.extension._has_ops()``) except two fake-tensor registrations (``nms``,
``qnms``) that raise ``operator torchvision::nms does not exist``. This guards those two with the same check.
Everything clipforge and the image processors use (``transforms.v2`` on tensors / PIL, ``ops.misc``) is pure
Python; what needs the compiled ops (``ops.nms``, ``roi_align``, ``io.decode_jpeg``) still raises when called.
Does nothing when the ops load (a matching torchvision); safe to run twice.

    .venv-vllm/bin/python requirements/torchvision_without_ops.py
"""

from __future__ import annotations

import importlib.util
import os
import sys

OPS = ("nms", "qnms")


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed: nothing to do")
        return 0
    import torch

    lib = os.path.join(os.path.dirname(spec.origin), "_C.so")
    try:
        torch.ops.load_library(lib)
        print("torchvision's ops load: nothing to do")
        return 0
    except OSError:
        pass
    path = os.path.join(os.path.dirname(spec.origin), "_meta_registrations.py")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    changed = []
    for op in OPS:
        old = f'@torch.library.register_fake("torchvision::{op}")'
        new = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda f: f))'
        if new in text:
            continue
        if text.count(old) != 1:
            print(f"{path}: expected one `{old}`; this torchvision release is not the one this fix-up knows")
            return 1
        text = text.replace(old, new)
        changed.append(op)
    if not changed:
        print(f"{path}: already guarded")
        return 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(
        f"guarded torchvision's {', '.join(changed)} fake registrations in {path} (its compiled ops do not load)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
