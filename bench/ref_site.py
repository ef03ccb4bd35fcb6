"""Pack circuit-tracer 0.5.0 and the pure-Python side of its dependencies for a machine without them.

    .venv/bin/python bench/ref_site.py --python-version 3.12 --out .gpu_ref/site312.tgz

For `bench/attribution.py --gpu-gemma2-2b --ref-site .gpu_ref/site312.tgz` on a GPU machine that has
torch, numpy and a newer transformers but not the reference: downloads (pip, binary wheels only, no
dependency resolution) the packages the reference's nnsight backend imports, pinned as in
/work/shared/reference/requirements.lock.txt, including transformers 4.57.3 and huggingface_hub
0.36.2 (which shadow the machine's own in the reference's subprocess only), for the given Python
version on x86_64 Linux, and unpacks them into one .tgz (about 35 MB). torch, numpy, sympy and
CUDA libraries are left to the machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGES = """Jinja2 MarkupSafe PyYAML Pygments accelerate aiohappyeyeballs aiohttp aiosignal annotated-types anyio astor
attrs bidict certifi charset-normalizer circuit-tracer click cloudpickle dill einops filelock frozenlist
googleapis-common-protos httpx huggingface_hub idna ipython multidict nnsight opentelemetry-api
opentelemetry-exporter-http-transport opentelemetry-exporter-otlp-common opentelemetry-exporter-otlp-proto-common
opentelemetry-exporter-otlp-proto-http opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
packaging propcache protobuf pydantic pydantic_core python-engineio python-socketio regex requests rich tokenizers
tqdm traitlets transformers typing-inspection typing_extensions urllib3 websocket-client yarl httpcore h11 sniffio
simple-websocket wsproto parso prompt_toolkit pexpect stack_data executing asttokens pure_eval wcwidth
matplotlib-inline ipython_pygments_lexers ptyprocess markdown-it-py mdurl psutil fsspec safetensors zstandard""".split()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python-version", default="3.12")
    ap.add_argument("--lock", type=Path, default=Path("/work/shared/reference/requirements.lock.txt"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pins = {}
    for line in args.lock.read_text().splitlines():
        if "==" in line:
            name, version = line.strip().split("==", 1)
            pins[name.lower().replace("_", "-")] = version
    reqs = [f"{p}=={pins[p.lower().replace('_', '-')]}" for p in PACKAGES]
    abi = "cp" + args.python_version.replace(".", "")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        platforms = [
            f"--platform={p}"
            for p in (
                "manylinux2014_x86_64",
                "manylinux_2_17_x86_64",
                "manylinux_2_28_x86_64",
                "manylinux_2_5_x86_64",
                "manylinux1_x86_64",
            )
        ]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                f"--python-version={args.python_version}",
                *platforms,
                "--implementation=cp",
                f"--abi={abi}",
                "--abi=abi3",
                "--abi=none",
                "-d",
                str(tmp / "wheels"),
                *reqs,
            ],
            check=True,
        )
        site = tmp / "site"
        for wheel in sorted((tmp / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.out, "w:gz") as tf:
            tf.add(site, arcname="site")
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
