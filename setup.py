"""Build steps pyproject.toml cannot express: the cffi extensions (the KVM bindings,
compiled against <linux/kvm.h>, the virtqueue's C fast path, and the virtio
constants read from <linux/virtio_*.h>), and the probe
guest ELF, compiled with gcc."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


def _probe_builder():
    spec = importlib.util.spec_from_file_location("probe_build", HERE / "vmm/probe/build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithProbe(build_py):
    def run(self):
        super().run()
        builder = _probe_builder()
        out = Path(self.build_lib) / "vmm" / "probe" / "probe.elf"
        try:
            builder.build(out)
        except builder.ProbeBuildError as e:
            raise SystemExit(str(e)) from None


setup(
    cffi_modules=["vmm/_kvm_build.py:ffibuilder", "vmm/virtio/_ring_build.py:ffibuilder",
                  "vmm/virtio/_spec_build.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithProbe},
)
