"""The images the kubelet stand-in can run: each names the local program it stands for.

There is no container runtime, so an image is its entrypoint: the program
installed on this machine that the image would carry. A pod's ``command``
replaces the entrypoint and its ``args`` the default arguments, as in a
container. An image not listed here fails to "pull" (``ErrImagePull``), as
an image missing from a registry does.

- ``.../gatewaypool:*``: this project's image: the virtualenv ``./dev.sh``
  builds as the Dockerfile builds the image (the wheels of the Dockerfile's
  sources and of their dependencies, installed with ``--no-index``;
  ``$GATEWAYPOOL_IMAGE`` names it), with the ``ENV``, ``WORKDIR``,
  ``ENTRYPOINT`` and ``CMD`` of the Dockerfile's last stage, read from the
  Dockerfile itself. The operator and routers therefore run with what the
  image carries, not with the tests' virtualenv (which adds ``local/`` and
  the test tools).
- ``.../dcmtk:*``: DCMTK (``storescp`` and friends); the pod names the
  program in ``command``.
- ``.../orthanc:*``: Orthanc, reading the configuration folder its pod mounts
  (``/etc/orthanc`` by default, as the official image does).
- ``.../pynetdicom-gateway:*``: our pynetdicom Storage SCP
  (``python -m gatewaypool_local.sink``), which keeps each data set's exact
  bytes: what tests compare with what was sent.
- ``.../metrics-server:*``: metrics-server, built from its Go module
  (``tests/metricsserver``) by ``./dev.sh``, which names the binary in
  ``GATEWAYPOOL_METRICS_SERVER``; without it the image is missing.
- ``.../prometheus:*``: Prometheus, built from its Go module
  (``tests/prometheus``; ``GATEWAYPOOL_PROMETHEUS``), the same way.
- ``.../prometheus-adapter-standin:*``: the stand-in for Prometheus Adapter
  (``tests/metricsadapter``; ``GATEWAYPOOL_METRICS_ADAPTER``), the same way.
- ``.../busybox:*``: a shell (``CMD ["sh"]``), with this machine's programs
  on its PATH (``python3`` among them, which a real busybox lacks: tests use
  it to burn a measured share of a CPU).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"

_VENV = str(Path(sys.executable).parent)
#: The system's folders: DCMTK's storescp, not pynetdicom's app of that name in the virtualenv.
_SYSTEM = ("/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin")


@dataclass(frozen=True)
class Image:
    """What running the image means here: its ENTRYPOINT, CMD and PATH."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    path: tuple[str, ...] = _SYSTEM
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"

    def which(self, program: str) -> str:
        """`program` as the image's PATH finds it."""
        if "/" in program:
            return program
        for folder in self.path:
            candidate = Path(folder) / program
            if candidate.exists():
                return str(candidate)
        return shutil.which(program) or program


def dockerfile_image(text: str, venv: Path) -> Image:
    """The ENV, WORKDIR, ENTRYPOINT and CMD of a Dockerfile's last stage, its programs in `venv`."""
    joined = re.sub(r"\\\n", " ", text)
    stage = re.split(r"(?im)^FROM\s.*$", joined)[-1]
    env: dict[str, str] = {}
    workdir, entrypoint, cmd = "/", [], []
    for line in stage.splitlines():
        words = line.strip().split(None, 1)
        if len(words) != 2 or words[0].startswith("#"):
            continue
        instruction, rest = words[0].upper(), words[1]
        if instruction == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif instruction == "WORKDIR":
            workdir = rest.strip()
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instruction == "CMD":
            cmd = json.loads(rest)
    return Image(tuple(entrypoint), tuple(cmd), (str(venv / "bin"), *_SYSTEM), env, workdir)


#: The variable naming the image's virtualenv (set by ./dev.sh).
IMAGE_VARIABLE = "GATEWAYPOOL_IMAGE"


def project_venv() -> Path:
    """The image's virtualenv ``./dev.sh`` built, or an error saying how to get it."""
    path = os.environ.get(IMAGE_VARIABLE, "")
    if not path or not (Path(path) / "bin" / "gatewaypool").exists():
        raise RuntimeError(
            f"${IMAGE_VARIABLE} names no built image ({path!r}): run the tests through "
            "./dev.sh test (or ./dev.sh pytest ARGS), which builds it"
        )
    return Path(path)


#: Images of programs ./dev.sh builds from Go modules: repository name -> the variable naming it.
_BUILT = {
    "metrics-server": "GATEWAYPOOL_METRICS_SERVER",
    "prometheus": "GATEWAYPOOL_PROMETHEUS",
    "prometheus-adapter-standin": "GATEWAYPOOL_METRICS_ADAPTER",
}


def _images() -> dict[str, Image]:
    extra = {}
    for name, variable in _BUILT.items():
        built = os.environ.get(variable, "")
        if built and Path(built).exists():
            extra[name] = Image((built,))
    return {
        **extra,
        "busybox": Image((), ("sh",)),
        "dcmtk": Image(()),
        "orthanc": Image(("Orthanc",), ("/etc/orthanc/",)),
        "pynetdicom-gateway": Image(
            (sys.executable, "-m", "gatewaypool_local.sink"),
            path=(_VENV, *_SYSTEM),
            env={"PYTHONUNBUFFERED": "1"},
        ),
    }


def repository_name(image: str) -> str:
    """The last path part of an image reference, without tag or digest."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def pull(image: str) -> Image | None:
    """The image, or None when no such image exists (ErrImagePull)."""
    name = repository_name(image)
    if name == "gatewaypool":
        return dockerfile_image(DOCKERFILE.read_text(), project_venv())
    return _images().get(name)


def command_line(image: Image, command: list[str], args: list[str]) -> list[str]:
    """The argv a container runs: ``command`` or the entrypoint, then ``args`` or CMD."""
    argv = [*command, *args] if command else [*image.entrypoint, *(args or image.cmd)]
    if not argv:
        raise ValueError("the container has no command and its image no entrypoint")
    return [image.which(argv[0]), *argv[1:]]
