"""scripts/gpu_check.sh's environment steps, with the machine's own Python:

    python scripts/gpu_env.py missing-wheels DIR   # the wheels in DIR whose package is not installed
    python scripts/gpu_env.py check --platform gpu # versions, the device; exit 2 naming a missing piece

No network: a package that is missing and not in the wheel folder is an error that says how to
bring it (``make gpu-wheels`` here, the folder carried to the machine).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import sys

# distribution -> module, for what our code imports on the GPU check's paths
REQUIRED = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax",
            "orbax-checkpoint": "orbax.checkpoint", "numpy": "numpy", "sentencepiece": "sentencepiece",
            "pyyaml": "yaml", "tqdm": "tqdm", "tensorboardX": "tensorboardX", "matplotlib": "matplotlib",
            "sacrebleu": "sacrebleu", "flatbuffers": "flatbuffers", "pytest": "pytest"}
REFERENCES = {"torch": "torch", "transformers": "transformers"}  # the PyTorch side of the comparisons


def fail(message: str) -> None:
    print(f"gpu_check: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _dist_name(wheel: str) -> str:
    return os.path.basename(wheel).split("-")[0].replace("_", "-").lower()


def missing_wheels(folder: str) -> list[str]:
    """Wheels of ``folder`` whose distribution this Python lacks (one version of each)."""
    out = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".whl"):
            continue
        try:
            importlib.metadata.version(_dist_name(name))
        except importlib.metadata.PackageNotFoundError:
            out.append(os.path.join(folder, name))
    return out


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def check_imports() -> dict:
    versions = {"python": platform.python_version()}
    for dist, module in {**REQUIRED, **REFERENCES}.items():
        try:
            importlib.import_module(module)
        except ImportError as e:
            fail(f"Python package {dist} cannot be imported ({e}); run `make gpu-wheels` on the "
                 f"development machine and carry .gpu-wheels (README: On a GPU)")
        versions[dist] = _version(dist)
    return versions


def check_device(expected: str) -> dict:
    import jax
    devices = jax.devices()
    if jax.default_backend() != expected:
        fail(f"JAX runs on {jax.default_backend()!r} ({devices}), expected {expected!r}: is the jax CUDA "
             f"plugin installed (jax-cuda*-plugin), and does `nvidia-smi` see a GPU?")
    info = {"jax_backend": jax.default_backend(), "jax_devices": [f"{d.platform}:{d.device_kind}" for d in devices]}
    import torch
    if expected == "gpu":
        if not torch.cuda.is_available():
            fail("PyTorch sees no CUDA device: the references need it on the same GPU")
        props = torch.cuda.get_device_properties(0)
        info["torch_device"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
        info["cudnn"] = str(torch.backends.cudnn.version())
    import jax.numpy as jnp
    x = jnp.arange(8.0)
    if float(jax.jit(lambda v: (v * v).sum())(x)) != 140.0:
        fail("a trivial JAX computation gave a wrong answer on the device")
    return info


def check_nety() -> None:
    """Our package with the modules the check uses (a missing dependency shows here, named)."""
    for module in ("nety_jax.training.loop", "nety_jax.serving.export", "nety_jax.models.hybrid.torch_io",
                   "nety_jax.decoding"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            fail(f"{module} cannot be imported: {e} (PYTHONPATH={os.environ.get('PYTHONPATH', '')})")


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("missing-wheels")
    w.add_argument("folder")
    c = sub.add_parser("check")
    c.add_argument("--platform", choices=("gpu", "cpu"), default="gpu")
    args = p.parse_args()
    if args.cmd == "missing-wheels":
        print("\n".join(missing_wheels(args.folder)))
        return 0
    versions = check_imports()
    check_nety()
    info = check_device(args.platform)
    for key, value in {**versions, **info}.items():
        print(f"{key:18} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
