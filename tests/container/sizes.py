"""`python -m tests.container.sizes ENGINE BASE RUNTIME [IMAGE...]`: prints the size of the base,
of the runtime image and of images built on it, and fails when the runtime image's layers add
more above the base than the bound it is held to. An image with a bundle inside adds the bundle
to that (printed as its size above the runtime image)."""

from __future__ import annotations

import os
import sys

from tests.container.engine import ENGINE_ENV, image_size

# What the runtime image may add above debian:bookworm-slim: Debian's python3 and the runtime
# wheels (onnxruntime, tokenizers, numpy, aiohttp and their dependencies), no export stack.
MAX_ABOVE_BASE_BYTES = 250 * 10**6
MB = 10**6


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: python -m tests.container.sizes ENGINE BASE RUNTIME [IMAGE...]\n")
        return 2
    os.environ[ENGINE_ENV] = argv[0]
    base_name, runtime_name, others = argv[1], argv[2], argv[3:]
    base, runtime = image_size(base_name), image_size(runtime_name)
    print(f"{base_name}: {base / MB:.1f} MB")
    print(f"{runtime_name}: {runtime / MB:.1f} MB, {(runtime - base) / MB:.1f} MB above the base")
    for name in others:
        size = image_size(name)
        print(f"{name}: {size / MB:.1f} MB, {(size - runtime) / MB:.1f} MB above {runtime_name}")
    if runtime - base > MAX_ABOVE_BASE_BYTES:
        sys.stderr.write(f"{runtime_name} adds {(runtime - base) / MB:.1f} MB above its base, "
                         f"over the {MAX_ABOVE_BASE_BYTES / MB:.0f} MB bound\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
