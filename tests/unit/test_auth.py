"""Token files, digests, constant-time verification and the exposure rule (no Ray)."""

from __future__ import annotations

import hashlib
import pathlib

import pytest

from modelweave.auth import (
    AuthSettings,
    TokenVerifier,
    exposure_problem,
    hash_token,
    is_loopback,
    load_token_file,
    parse_token_file,
)
from modelweave.errors import InvalidArgument, Status, Unauthenticated, error_for_status
from modelweave.spec import parse_graph

OLD = "old-token-0123456789abcdef"
NEW = "new-token-fedcba9876543210"


def test_token_file_keeps_names_and_only_digests():
    digests = parse_token_file(f"# clients\n\nci:{OLD}\nci:{NEW}\n  web : {NEW}x \n")
    assert [d.name for d in digests] == ["ci", "ci", "web"]
    assert digests[0].sha256 == hashlib.sha256(OLD.encode()).hexdigest() == hash_token(OLD)
    dumped = AuthSettings(tokens=digests).model_dump_json()
    assert OLD not in dumped and NEW not in dumped  # what Serve's config would hold


@pytest.mark.parametrize(("text", "needle"), [
    ("ci", "expected 'name:token'"),
    ("ci:", "expected 'name:token'"),
    ("bad name:" + OLD, "token name"),
    ("ci:short", "at least 16"),
    ("ci:has spaces in the token", "at least 16"),
    (f"a:{OLD}\nb:{OLD}", "twice"),
    ("# only a comment\n", "no 'name:token'"),
])
def test_malformed_token_files_name_the_line_never_the_token(text, needle):
    with pytest.raises(InvalidArgument, match=needle) as exc:
        parse_token_file(text, "tokens.txt")
    assert OLD not in str(exc.value) and "has spaces in the token" not in str(exc.value)


def test_unreadable_token_file(tmp_path: pathlib.Path):
    with pytest.raises(InvalidArgument, match="cannot read token file"):
        load_token_file(tmp_path / "missing.txt")
    (tmp_path / "t.txt").write_text(f"ci:{OLD}\n")
    assert load_token_file(tmp_path / "t.txt")[0].name == "ci"


def test_verifier_accepts_every_rotated_token_and_refuses_the_rest():
    verifier = TokenVerifier(parse_token_file(f"ci:{OLD}\nci:{NEW}\nweb:{NEW}x"))
    assert verifier.verify(f"Bearer {OLD}") == "ci"
    assert verifier.verify(f"bearer {NEW}") == "ci"
    assert verifier.verify(f"Bearer {NEW}x") == "web"
    for bad in (None, "", OLD, f"Basic {OLD}", f"Bearer {OLD}0", "Bearer ", "Bearer " + "x" * 5000):
        with pytest.raises(Unauthenticated) as exc:
            verifier.verify(bad)
        assert exc.value.status is Status.UNAUTHENTICATED
        assert OLD not in str(exc.value)
    with pytest.raises(InvalidArgument):
        TokenVerifier([])


def test_unauthenticated_round_trips_by_status():
    err = error_for_status("UNAUTHENTICATED", "no token")
    assert isinstance(err, Unauthenticated)


def test_graph_ingress_carries_auth_settings():
    spec = parse_graph({"name": "g", "ingress": {"auth": {"tokens": [{"name": "ci", "sha256": hash_token(OLD)}]}},
                        "flow": {"kind": "model", "name": "m", "impl": "fakes:Upper"}})
    assert spec.ingress.auth is not None and spec.ingress.auth.tokens[0].name == "ci"
    with pytest.raises(InvalidArgument, match="sha256"):
        parse_graph({"name": "g", "ingress": {"auth": {"tokens": [{"name": "ci", "sha256": OLD}]}},
                     "flow": {"kind": "model", "name": "m", "impl": "fakes:Upper"}})


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_exposure_rule():
    assert exposure_problem("127.0.0.1", authenticated=False, insecure=False) is None
    assert exposure_problem("0.0.0.0", authenticated=True, insecure=False) is None
    assert exposure_problem("0.0.0.0", authenticated=False, insecure=True) is None
    problem = exposure_problem("0.0.0.0", authenticated=False, insecure=False)
    assert problem is not None and "--auth-tokens" in problem and "--insecure" in problem
