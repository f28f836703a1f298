"""GPU device numbers -> the node names drivers give them (/dev/nvidia0, /dev/dri/renderD128, ...).

The cgroup/dev hook reports major:minor, not a path: a node made elsewhere or
opened through a dirfd has the same number as the real one. Majors 195 (nvidia)
and 226 (DRM) are fixed; the others are dynamic and named in /proc/devices.
"""

from __future__ import annotations


def gpu_node_name(major: int, minor: int, drivers: dict[int, str]) -> str:
    driver = drivers.get(major, "")
    if major == 195:
        return {255: "/dev/nvidiactl", 254: "/dev/nvidia-modeset"}.get(minor, f"/dev/nvidia{minor}")
    if major == 226:
        return f"/dev/dri/renderD{minor}" if minor >= 128 else f"/dev/dri/card{minor}"
    if driver == "nvidia-uvm":
        return {0: "/dev/nvidia-uvm", 1: "/dev/nvidia-uvm-tools"}.get(minor, f"/dev/nvidia-uvm{minor}")
    if driver == "nvidia-caps":
        return f"/dev/nvidia-caps/nvidia-cap{minor}"
    if driver == "kfd":
        return "/dev/kfd"
    if driver == "accel":
        return f"/dev/accel/accel{minor}"
    return f"<char device {major}:{minor}{' ' + driver if driver else ''}>"
