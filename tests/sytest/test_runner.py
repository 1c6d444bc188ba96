"""The SyTest tooling itself: the adapter writes a config Starling accepts with what SyTest
needs, and the runner tells new failures from expected ones."""

from __future__ import annotations

import json
from pathlib import Path

from starling.config import load_config
from tests.federation.harness import make_test_pki
from tests.sytest import adapter, run

TAP = """\
1..6
ok 1 GET /versions works
not ok 2 POST /register rejects usernames with '\\n'
# HTTP Request failed
ok 3 (expected fail) Something listed that now passes # TODO passed but expected fail
not ok 4 (expected fail) Something listed that still fails # TODO expected fail
ok 5 Needs a feature # skip no AS support
ok 6 Another pass
"""


def test_parse_tap_classifies_every_outcome() -> None:
    out = run.parse_tap(TAP)
    assert out.plan_seen
    assert out.passed == {"GET /versions works", "Another pass"}
    assert out.failed == {"POST /register rejects usernames with '\\n'"}
    assert out.passed_unexpectedly == {"Something listed that now passes"}
    assert out.expected_fail == {"Something listed that still fails"}
    assert out.skipped == {"Needs a feature"}


def test_expected_failures_file_format(tmp_path: Path) -> None:
    path = tmp_path / "expected.txt"
    path.write_text(
        "# a comment line\n\nSome test name   # why it fails\nAnother test\n",
        encoding="utf-8",
    )
    assert run.read_expected_failures(path) == {
        "Some test name": "why it fails",
        "Another test": "",
    }


def test_compare_fails_on_new_failures_and_names_newly_passing() -> None:
    out = run.parse_tap(TAP)
    expected = {
        "Something listed that now passes": "r",
        "Something listed that still fails": "r",
        "A renamed test": "r",
    }
    code, report = run.compare(out, expected, full_run=True)
    assert code == 1
    assert "NEW FAILURE: POST /register rejects usernames with '\\n'" in report
    assert "NEWLY PASSING: Something listed that now passes" in report
    assert "NOT RUN: A renamed test" in report
    # A partial run (some test files) does not report the listed tests it did not run.
    _, partial = run.compare(out, expected, full_run=False)
    assert "NOT RUN" not in partial


def test_compare_passes_when_only_listed_tests_fail() -> None:
    out = run.parse_tap("1..2\nok 1 A\nnot ok 2 (expected fail) B # TODO expected fail\n")
    code, report = run.compare(out, {"B": "reason"}, full_run=True)
    assert code == 0
    assert "no new failures" in report


def test_adapter_config_is_valid_and_serves_everything_on_the_tls_port(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    hs = {
        "hs_index": 0,
        "hs_dir": str(tmp_path),
        "server_name": "localhost:28448",
        "bind_host": "localhost",
        "public_baseurl": "https://localhost:28448",
        "tls_port": 28448,
        "plain_port": 28449,
        "tls_certificate_path": str(pki.cert),
        "tls_private_key_path": str(pki.key),
        "federation_ca_path": str(pki.ca_cert),
        "registration_shared_secret": "reg_secret",
        "app_service_config_files": [],
        "recaptcha": {
            "siteverify_api": "https://localhost:28500/recaptcha/api/siteverify",
            "public_key": "sytest_recaptcha_public_key",
            "private_key": "sytest_recaptcha_private_key",
        },
    }
    (tmp_path / "sytest-hs.json").write_text(json.dumps(hs), encoding="utf-8")
    path = adapter.generate_config(hs, tmp_path / "starling", "sqlite")
    config = load_config(path, environ={})
    assert config.server_name == "localhost:28448"
    tls = [listener for listener in config.listeners if listener.tls]
    assert len(tls) == 1 and tls[0].port == 28448
    names = {name for resource in tls[0].resources for name in resource.names}
    assert {"client", "federation", "keys", "media"} <= names
    assert config.federation_custom_ca_list == [str(pki.ca_cert)]
    assert config.ip_range_blacklist == []
    assert config.registration_shared_secret == "reg_secret"
    assert config.allow_guest_access and config.enable_registration
    assert config.url_preview_enabled
    assert config.rc_message.per_second >= 1000
    # SyTest's fake siteverify: a captcha is checked when submitted, never required.
    assert config.recaptcha_private_key == "sytest_recaptcha_private_key"
    assert config.recaptcha_siteverify_api.endswith(":28500/recaptcha/api/siteverify")
    assert not config.enable_registration_captcha


def test_new_failures_are_traced_to_their_files_and_retried_once(tmp_path: Path) -> None:
    tests_dir = tmp_path / "sytest" / "tests"
    (tests_dir / "30rooms").mkdir(parents=True)
    (tests_dir / "30rooms" / "01state.pl").write_text('test "Room state works",\n  do => 1;\n')
    (tests_dir / "10apidoc").mkdir()
    (tests_dir / "10apidoc" / "01register.pl").write_text("test 'Other test', do => 1;\n")
    assert run.test_files_for({"Room state works"}, tests_dir) == ["tests/30rooms/01state.pl"]
    assert run.test_files_for({"Unknown"}, tests_dir) == []

    first = run.Outcomes(passed={"a"}, failed={"flaky one", "broken one"})
    retry = run.Outcomes(passed={"flaky one"}, failed={"broken one"})
    after = run.outcomes_after_retry(first, retry)
    assert after.failed == {"broken one"}
    assert after.passed == {"a", "flaky one"}
    code, report = run.compare(after, {}, full_run=True)
    assert code == 1 and "NEW FAILURE: broken one" in report and "flaky one" not in report
