"""Find kernel headers for BCC and say which ones were used and why.

BCC compiles the probes at start-up and needs kernel headers. The running
kernel's own headers are preferred (``/lib/modules/$(uname -r)/build``, present
on any node with NVIDIA's DKMS driver). Where the distro has none for this
kernel, the newest generic distro headers are merged into one symlink tree and
handed to BCC through ``BCC_KERNEL_SOURCE``. That is safe only because the
probes read stable-ABI data (see probes/gpuguard.h).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/gpuguard/kernel-headers")


class HeadersError(RuntimeError):
    """No usable kernel headers: the message names the package to install."""


@dataclass(frozen=True)
class KernelHeaders:
    path: Path
    reason: str
    exact: bool  # headers of the running kernel, not a generic fallback


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _arch_suffix() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def find_generic_headers(src_root: Path = Path("/usr/src")) -> tuple[Path, Path]:
    """Newest Debian-style pair ``linux-headers-V-common`` / ``linux-headers-V-<arch>``."""
    arch = _arch_suffix()
    pairs = []
    for arch_dir in src_root.glob(f"linux-headers-*-{arch}"):
        version = arch_dir.name[len("linux-headers-") : -len(f"-{arch}")]
        common = src_root / f"linux-headers-{version}-common"
        if common.is_dir() and (arch_dir / "include").is_dir():
            pairs.append((version, common, arch_dir))
    if not pairs:
        raise HeadersError(
            f"no kernel headers for {platform.release()} and no generic ones in {src_root}: "
            "install linux-headers-$(uname -r) or, on Debian, linux-headers-amd64"
        )
    pairs.sort(key=lambda p: _version_key(p[0]))
    _, common, arch_dir = pairs[-1]
    return common, arch_dir


def merge_tree(common: Path, arch_dir: Path, dest: Path) -> Path:
    """Symlink tree of ``common`` overlaid by ``arch_dir`` (kconfig.h lives in common)."""
    stamp = dest / ".gpuguard-complete"
    if stamp.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-as", "--remove-destination", f"{common}/.", str(dest)], check=True)
    subprocess.run(["cp", "-as", "--remove-destination", f"{arch_dir}/.", str(dest)], check=True)
    stamp.write_text(f"{common}\n{arch_dir}\n")
    return dest


def resolve_kernel_headers(cache_dir: Path = DEFAULT_CACHE, release: str | None = None) -> KernelHeaders:
    """Pick headers and export ``BCC_KERNEL_SOURCE`` when the fallback is used."""
    release = release or platform.release()
    override = os.environ.get("BCC_KERNEL_SOURCE")
    if override:
        return KernelHeaders(Path(override), "BCC_KERNEL_SOURCE set by the user", exact=False)
    build = Path(f"/lib/modules/{release}/build")
    if (build / "include").is_dir():
        return KernelHeaders(build, f"headers of the running kernel {release}", exact=True)
    common, arch_dir = find_generic_headers()
    merged = merge_tree(common, arch_dir, cache_dir / arch_dir.name)
    os.environ["BCC_KERNEL_SOURCE"] = str(merged)
    return KernelHeaders(
        merged,
        f"no headers for the running kernel {release}; using generic {arch_dir.name} "
        "(safe: probes read uapi data and kernel fields at BTF offsets only)",
        exact=False,
    )
