"""The image's Dockerfile and what runs it (deploy/) agree: user, port, the bundle's place and
the image's name; and the build context carries what the Dockerfile copies. No engine needed:
`make image-test` (tests/container/) runs the images themselves."""

from __future__ import annotations

import re

from edge_embed import __version__
from tests.fixtures.deploy import yaml_docs
from tests.fixtures.server import ROOT

DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"
DEPLOY = ROOT / "deploy"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [(w[0].upper(), w[1] if len(w) > 1 else "") for line in lines
            if line and not line.startswith("#") for w in [line.split(None, 1)]]


def _stage(name: str) -> list[tuple[str, str]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for op, args in _instructions():
        if op == "FROM":
            current = args.split()[-1]
            stages[current] = []
        elif current:
            stages[current].append((op, args))
    return stages[name]


def _one(stage: str, op: str) -> str:
    (args,) = [a for o, a in _stage(stage) if o == op]
    return args


def test_user_port_and_bundle_match_the_manifests() -> None:
    (deployment,) = yaml_docs(DEPLOY / "kubernetes" / "base" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert _one("server", "USER") == f"{pod['securityContext']['runAsUser']}:" \
        f"{pod['securityContext']['runAsGroup']}"
    assert _one("server", "EXPOSE") == str(container["ports"][0]["containerPort"])
    assert "EDGE_EMBED_HOST=0.0.0.0" in _one("server", "ENV").split()
    (compose,) = yaml_docs(DEPLOY / "compose" / "compose.yaml")
    served = compose["services"]["edge-embed"]
    assert _one("minilm", "ENV") == f"EDGE_EMBED_MODEL={served['environment']['EDGE_EMBED_MODEL']}"
    assert served["user"] == _one("server", "USER")
    (configmap,) = yaml_docs(DEPLOY / "kubernetes" / "base" / "configmap.yaml")
    assert _one("minilm", "ENV") == f"EDGE_EMBED_MODEL={configmap['data']['EDGE_EMBED_MODEL']}"


def test_manifests_name_this_versions_model_image() -> None:
    (kustomization,) = yaml_docs(DEPLOY / "kubernetes" / "base" / "kustomization.yaml")
    assert kustomization["images"] == [{"name": "edge-embed", "newTag": f"{__version__}-minilm"}]
    (compose,) = yaml_docs(DEPLOY / "compose" / "compose.yaml")
    assert compose["services"]["edge-embed"]["image"] == f"edge-embed:{__version__}-minilm"


def test_server_is_pid_1_and_health_is_checked_without_curl() -> None:
    entrypoint = _one("server", "ENTRYPOINT")
    assert entrypoint.startswith("["), "exec form, so SIGTERM reaches the server"
    health = _one("server", "HEALTHCHECK")
    assert '"edge_embed.service.healthcheck"' in health and "curl" not in health


def test_build_context_carries_what_the_dockerfile_copies() -> None:
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text(encoding="utf-8")
               .splitlines() if line.startswith("!")]
    copied = [args.split()[0].split("/$")[0] for stage in ("build", "bundle", "minilm")
              for op, args in _stage(stage) if op == "COPY" and not args.startswith("--from")]
    assert copied, "no COPY found"
    for source in copied:
        assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_the_wheel_built_in_the_image_has_every_subpackage() -> None:
    """edge_embed/ links the top-level folders in; a folder the build does not copy would be a
    dangling link there, and the wheel would silently lack that subpackage."""
    copied = {args.split()[0] for op, args in _stage("build") if op == "COPY"}
    for link in sorted((ROOT / "edge_embed").iterdir()):
        if link.is_symlink():
            assert link.resolve().name in copied, f"the build stage does not copy {link.name}/"


def test_the_model_image_gets_its_bundle_from_the_build_not_the_host() -> None:
    """The -minilm bundle is made in the bundle stage by the Makefile's own `make model` recipe,
    and the minilm stage copies nothing from the build context (no host-built bundle)."""
    copies = [args for op, args in _stage("minilm") if op == "COPY"]
    assert copies and all(args.startswith("--from=bundle ") for args in copies), copies
    runs = " ".join(args for op, args in _stage("bundle") if op == "RUN")
    assert re.search(r"\bmake -C /src model\b", runs), runs
    assert "!models" not in (ROOT / ".dockerignore").read_text(encoding="utf-8")
