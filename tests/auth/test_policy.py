"""Every RPC of the contract has an access level, and docs/security.md says the same."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from rustaid.auth import peercred
from rustaid.auth.policy import ADMIN, PUBLIC, USER, Access, access_for, classified_methods
from rustaid.config import load_settings
from rustaid.errors import InvalidArgument

REPO = Path(__file__).resolve().parents[2]
API = REPO / "rustaid" / "api" / "v1"
DOC = REPO / "docs" / "security.md"


def contract_methods() -> dict[str, str]:
    """Every method of the contract ("/rustaid.api.v1.Service/Method" -> service)."""
    found: dict[str, str] = {}
    for path in sorted(API.glob("*_pb2.py")):
        module = importlib.import_module(f"rustaid.api.v1.{path.stem}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = service.name
    return found


def test_every_rpc_of_every_service_is_classified() -> None:
    methods = contract_methods()
    assert len(methods) > 40  # the walk found the contract
    missing = sorted(set(methods) - set(classified_methods()))
    assert not missing, f"classify these RPCs in rustaid/auth/policy.py: {missing}"
    stale = sorted(set(classified_methods()) - set(methods))
    assert not stale, f"no longer in the contract: {stale}"


def test_changing_rpcs_are_for_administrators() -> None:
    must = [
        "PluginsService/LoadPlugin",
        "PluginsService/UnloadPlugin",
        "PluginsService/ReloadPlugin",
        "UpdatesService/ApplyUpdate",
        "UpdatesService/Rollback",
        "UpdatesService/CheckUpdates",
        "ResourcesService/SetPowerProfile",
        "ResourcesService/ResetMetrics",
        "RagService/DeleteCollection",
        "RagService/IndexDocuments",
        "ModelsService/LoadModel",
        "ModelsService/UnloadModel",
    ]
    methods = contract_methods()
    if "/rustaid.api.v1.ResourcesService/ClearPowerProfile" in methods:
        must.append("ResourcesService/ClearPowerProfile")
    for name in must:
        assert access_for(f"/rustaid.api.v1.{name}") is ADMIN, name
    for name in ("GenerateService/GenerateStream", "ModelsService/ListModels", "RagService/Search"):
        assert access_for(f"/rustaid.api.v1.{name}") is USER, name


def test_unknown_methods_are_closed_and_health_is_open() -> None:
    assert access_for("/rustaid.api.v1.ModelsService/DropEverything") is ADMIN
    assert access_for("/some.other.Service/Method") is ADMIN
    assert access_for("/grpc.health.v1.Health/Check") is PUBLIC
    assert access_for("/grpc.health.v1.Health/Watch") is PUBLIC
    assert access_for("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is PUBLIC


def test_docs_table_matches_the_code() -> None:
    rows = re.findall(r"^\| `(\w+)\.(\w+)` \| (public|user|admin) \|", DOC.read_text(), re.M)
    documented = {f"/rustaid.api.v1.{s}/{m}": Access[a.upper()] for s, m, a in rows}
    assert documented == classified_methods()


def test_peer_credentials_default_on_for_system_and_user_daemons(tmp_path: Path) -> None:
    assert load_settings(data_dir=tmp_path, system=True, environ={}).peer_credentials
    assert load_settings(data_dir=tmp_path, system=False, environ={}).peer_credentials
    off = load_settings(
        data_dir=tmp_path, system=True, environ={"RUSTAID_PEER_CREDENTIALS": "false"}
    )
    assert not off.peer_credentials
    off = load_settings(data_dir=tmp_path, system=False, overrides={"peer_credentials": False})
    assert not off.peer_credentials


def test_security_settings_from_toml(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "rustaid.toml").write_text(
        'admin_uids = [1000, 1001]\nadmin_group = "wheel"\nadmin_cert_names = ["ops"]\n'
        'listen = ["unix:///tmp/x.sock", "[::1]:50051"]\nallow_insecure_tcp = true\n'
    )
    s = load_settings(data_dir=tmp_path, environ={})
    assert s.admin_uids == (1000, 1001) and s.admin_cert_names == ("ops",)
    assert s.allow_insecure_tcp


@pytest.mark.parametrize(
    ("listen", "extra", "key"),
    [
        ("0.0.0.0:50051", {"allow_insecure_tcp": True}, "tls_cert"),
        ("[::]:50051", {"allow_insecure_tcp": True}, "tls_cert"),
        ("myhost.example:50051", {"allow_insecure_tcp": True}, "tls_cert"),
        ("127.0.0.1:50051", {}, "allow_insecure_tcp"),
        ("localhost:50051", {}, "allow_insecure_tcp"),
        ("unix:///tmp/x.sock", {"tls_cert": "a.pem"}, "tls_key"),
        ("unix:///tmp/x.sock", {"admin_uids": "1000,-1"}, "admin_uids"),
    ],
)
def test_transport_settings_refused_name_the_key(
    tmp_path: Path, listen: str, extra: dict[str, object], key: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        load_settings(data_dir=tmp_path, environ={}, overrides={"listen": [listen], **extra})
    assert raised.value.field == key
    assert key in raised.value.message or key == "admin_uids"


def test_uid_map_parsing(tmp_path: Path) -> None:
    # As systemd's PrivateUsers=yes leaves it: root, the service's user, nobody.
    (tmp_path / "uid_map").write_text("0 0 1\n999 999 1\n65534 65534 1\n")
    assert peercred.uid_mapped(0, tmp_path) and peercred.uid_mapped(999, tmp_path)
    assert not peercred.uid_mapped(1000, tmp_path)
    (tmp_path / "gid_map").write_text("0 0 4294967295\n")
    assert peercred.gid_mapped(1000, tmp_path)
