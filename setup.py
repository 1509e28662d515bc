"""Build hook for callpath's optional C extensions.

Metadata lives in pyproject.toml. C accelerators (G.711, mixing, SIP scanning) are added to
``OPTIONAL_EXTENSIONS`` as they are written; each one is optional: when no compiler is present the
build continues and the pure-Python/numpy paths are used instead. Under CI (``CI=true``) a failed build
is an error: the install fails, so a broken accelerator cannot hide behind its fallback.
"""
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPTIONAL_EXTENSIONS: list = [
    # SIP header scanning for sipcore.message.parse_message (reference: message._scan_headers)
    Extension("sipcore._scan", ["sipcore/_scan.c"], extra_compile_args=["-O2"]),
    # G.711 µ-law/A-law table lookups for media.g711 (reference: media.g711.reference)
    Extension("media._g711", ["media/_g711.c"], depends=["media/_g711.h"], extra_compile_args=["-O2"]),
    # the passthrough data plane (epoll + recvmmsg/sendmmsg forwarding; reference: the Python path in
    # media.session/bridge/rtp, switched in by media.relay). Linux only; bit-exact float order for jitter.
    # with the jitter buffer in C (reference: media.jitter.JitterBuffer) and the transcoding tick
    # (reference: media.bridge.tick_bridges)
    Extension("media._relay", ["media/_relay.c", "media/_jitter.c"], depends=["media/_jitter.h", "media/_g711.h"],
              extra_compile_args=["-O2", "-ffp-contract=off", "-Wall"]),
]


STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class OptionalBuildExt(build_ext):
    """build_ext that skips an extension it cannot compile instead of failing the install (except under CI)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            if STRICT:
                raise
            print(f"callpath: C extensions skipped ({exc}); using pure-Python paths")

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            if STRICT:
                raise RuntimeError(f"callpath: C extension {ext.name} failed to build under CI: {exc}") from exc
            print(f"callpath: extension {ext.name} skipped ({exc}); using pure-Python path")


setup(ext_modules=OPTIONAL_EXTENSIONS, cmdclass={"build_ext": OptionalBuildExt})
