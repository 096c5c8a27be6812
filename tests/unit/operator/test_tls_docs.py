"""The DICOM TLS guide says what the operator renders, and its commands fit the example."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gatewaypool_operator.children.desired import build_children
from gatewaypool_operator.children.gateway import FS_GROUP
from gatewaypool_operator.children.podparts import SECRET_FILE_MODE
from gatewaypool_operator.spec.parse import parse_spec

ROOT = Path(__file__).resolve().parents[3]
GUIDE = ROOT / "docs" / "security.md"
EXAMPLE = ROOT / "examples" / "secure.yaml"

EVERYTHING = {
    "gateway": {
        "image": "gw:1",
        "tls": {"caSecretName": "gw-ca", "clientCertSecretName": "router-gw"},
    },
    "router": {
        "tls": {
            "secretName": "router-tls",
            "clientCASecretName": "ca",
            "callerSubjects": [{"aeTitle": "CT01", "subject": "CN=ct01"}],
        }
    },
}


def test_the_guide_lists_every_folder_and_option_the_operator_renders() -> None:
    from gatewaypool_operator.children.router import RUN_AS_USER, secret_mounts

    text = GUIDE.read_text()
    spec = parse_spec(EVERYTHING, default_router_image="gp:1")
    mounts = secret_mounts(spec)
    assert len(mounts) == 4
    for mount in mounts:
        assert f"`{mount.directory}`" in text, mount.directory
        for key in mount.keys:
            assert f"`{key}`" in text
    [deployment] = [
        obj
        for obj in build_children(
            name="ct", namespace="ns", spec=spec, map_data=None, gateway_replicas=1
        )
        if obj["kind"] == "Deployment"
    ]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    options = {arg for arg in command if arg.startswith("--") and ("tls" in arg or "caller" in arg)}
    assert options == {
        "--tls-port",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--caller-subject",
        "--gateway-tls-ca",
        "--gateway-tls-cert",
        "--gateway-tls-key",
    }
    for option in options - {"--tls-port"}:
        assert f"`{option}" in text, option
    assert f"0{SECRET_FILE_MODE:o}" in text
    assert f"`fsGroup` {RUN_AS_USER}" in text


def test_the_dcmtk_commands_use_the_examples_names() -> None:
    docs = [doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc]
    [pool] = [doc for doc in docs if doc["kind"] == "GatewayPool"]
    secrets = {doc["spec"]["secretName"] for doc in docs if doc["kind"] == "Certificate"}
    router = pool["spec"]["router"]
    text = GUIDE.read_text()
    for tool in ("echoscu", "storescu"):
        command = re.search(rf"^{tool} .*$", text, re.MULTILINE)
        assert command is not None, tool
        line = command.group(0)
        assert "+tls client.key client.crt +cf ca.crt" in line
        assert f"-aec {router['aeTitle']}" in line
        assert f"-aet {router['tls']['callerSubjects'][0]['aeTitle']}" in line
        assert line.split()[-1 if tool == "echoscu" else -2] == str(router["tls"]["port"])
    for secret in re.findall(r"kubectl get secret (\S+)", text):
        assert secret in secrets, secret
    assert f"svc/{pool['metadata']['name']}-router" in text
    readme = (ROOT / "README.md").read_text()
    assert "storescu +tls client.key client.crt +cf ca.crt" in readme
    assert "(docs/security.md)" in readme


def test_the_guides_links_exist() -> None:
    link = re.compile(r"(?<!!)\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")
    targets = link.findall(GUIDE.read_text())
    assert targets
    for target in targets:
        assert (GUIDE.parent / target).exists(), target


def test_the_gateway_example_is_a_valid_spec_whose_args_name_the_mounted_files() -> None:
    from gatewaypool_operator.children.gateway import secret_mounts

    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    [block] = [b for b in blocks if "serverCertSecretName" in b and "args:" in b]
    spec = yaml.safe_load(block)["spec"]
    pool = parse_spec(spec, default_router_image="gp:1")
    [mount] = secret_mounts(pool)
    assert mount.secret_name == spec["gateway"]["tls"]["serverCertSecretName"]
    args = spec["gateway"]["args"]
    assert args[args.index("+tls") + 1 : args.index("+tls") + 3] == [
        mount.path("tls.key"),
        mount.path("tls.crt"),
    ]
    assert args[-1] == str(pool.gateway.port)  # storescp's port is the gateway's
    assert pool.gateway.storage is not None
    assert args[args.index("-od") + 1] == pool.gateway.storage.mount_path
    text = GUIDE.read_text()
    assert f"`{mount.directory}`" in text
    assert f"mode 0{SECRET_FILE_MODE:o}, group {FS_GROUP}" in text
