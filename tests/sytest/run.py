#!/usr/bin/env python3
"""Run SyTest (matrix-org/sytest) against the working tree's Starling: `make sytest`.

SyTest's runner and sources live outside the repository, in the peer-suites folder
(`../shared/peer-suites` next to the repository by default, `--peer-suites` or
`$PEER_SUITES` to move it). This script

1. runs `sytest/run-sytest.sh` with tests/sytest/adapter.py as the homeserver command
   (installing SyTest's Debian dependencies first when they are missing and we may:
   `apt-get update` once, then `--install-deps`);
2. with `--expected-failures FILE`, hands SyTest that list (`-B`) and then compares:
   a test that fails and is not on the list is a **new failure** (exit 1); a test on the list
   that passed is printed as **newly passing** (take it off the list); a listed name that
   SyTest did not run is reported (a renamed test, a typo) but is not an error on a partial
   run;
3. leaves everything in `<work>/results/<UTC time>/` (`summary.txt`, `summary.json`,
   `sytest.tap`, `sytest.stderr`, each server's directory with `starling.log`) and points
   `<work>/results/latest` at it.

Exit codes: 0 the suite ran and nothing new failed; 1 new failures (or, without a list, any
failure when `--strict`); 2 SyTest could not run or was cut off by the timeout.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADAPTER = Path(__file__).resolve().parent / "adapter.py"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
MISSING_DEPS_EXIT = 3  # run-sytest.sh: a Perl module (Debian package) is missing

_TAP_LINE = re.compile(r"^(ok|not ok) \d+ (.*)$")
_EXPECTED = "(expected fail) "


@dataclass
class Outcomes:
    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    expected_fail: set[str] = field(default_factory=set)  # listed, and failed
    passed_unexpectedly: set[str] = field(default_factory=set)  # listed, and passed
    plan_seen: bool = False

    @property
    def ran(self) -> set[str]:
        return (
            self.passed | self.failed | self.skipped | self.expected_fail | self.passed_unexpectedly
        )


def parse_tap(text: str) -> Outcomes:
    """Outcome of each test in SyTest's TAP output (`run-tests.pl -O tap`)."""
    out = Outcomes()
    for line in text.splitlines():
        if re.match(r"^1\.\.\d+", line):
            out.plan_seen = True
            continue
        m = _TAP_LINE.match(line)
        if not m:
            continue
        ok, rest = m.group(1) == "ok", m.group(2)
        expected = rest.startswith(_EXPECTED)
        name = rest.removeprefix(_EXPECTED)
        if ok and re.search(r" # skip\b", name):
            out.skipped.add(re.sub(r" # skip\b.*$", "", name))
        elif expected:
            name = re.sub(r" # TODO.*$", "", name)
            (out.passed_unexpectedly if ok else out.expected_fail).add(name)
        else:
            (out.passed if ok else out.failed).add(name)
    return out


def read_expected_failures(path: Path) -> dict[str, str]:
    """Test name → reason, from `name  # reason` lines (SyTest's `-B` format: `#` starts a
    comment, blank lines and comment lines are ignored)."""
    entries: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        name, _, reason = raw.partition("#")
        name = name.strip()
        if name:
            entries[name] = reason.strip()
    return entries


def compare(outcomes: Outcomes, expected: dict[str, str], full_run: bool) -> tuple[int, str]:
    """(exit code, report) for a run made with the expected-failures list."""
    lines: list[str] = []
    new_failures = sorted(outcomes.failed)
    newly_passing = sorted(outcomes.passed_unexpectedly)
    not_run = sorted(set(expected) - outcomes.ran)
    if newly_passing:
        lines.append(
            f"{len(newly_passing)} test(s) on the expected-failures list now pass;"
            " take them off the list:"
        )
        lines += [f"  NEWLY PASSING: {name}" for name in newly_passing]
    if not_run and full_run:
        lines.append(f"{len(not_run)} listed test(s) did not run (renamed or misspelt?):")
        lines += [f"  NOT RUN: {name}" for name in not_run]
    if new_failures:
        lines.append(f"{len(new_failures)} NEW FAILURE(S) (not on the expected-failures list):")
        lines += [f"  NEW FAILURE: {name}" for name in new_failures]
    else:
        lines.append("sytest: no new failures")
    return (1 if new_failures else 0), "\n".join(lines)


def perl_deps_missing(runner: Path, env: dict[str, str]) -> bool:
    """Whether run-sytest.sh would stop for missing Debian packages (it checks them first,
    before anything else, and exits 3)."""
    with tempfile.TemporaryDirectory(prefix="sytest-probe-") as scratch:
        probe = subprocess.run(
            ["bash", str(runner), "--hs-command", "true", "--work", scratch],
            env={**env, "SYTEST_SRC": str(Path(scratch) / "no-sources")},
            capture_output=True,
            text=True,
        )
    return probe.returncode == MISSING_DEPS_EXIT and "missing Perl modules" in probe.stderr


def install_deps_allowed() -> bool:
    return os.geteuid() == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--peer-suites",
        default=os.environ.get("PEER_SUITES") or str(REPO.parent / "shared" / "peer-suites"),
        help="the peer-suites folder (default: ../shared/peer-suites next to the repository)",
    )
    ap.add_argument(
        "--work",
        default=os.environ.get("SYTEST_WORK") or str(REPO / "sytest-run"),
        help="scratch and results folder (default: sytest-run/ in the repository)",
    )
    ap.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("STARLING_TEST_POSTGRES") or DEFAULT_POSTGRES,
        default=None,
        metavar="ADMIN_URL",
        help=f"run the servers on PostgreSQL (a fresh database each; default {DEFAULT_POSTGRES})",
    )
    ap.add_argument("--expected-failures", type=Path, help="list of tests expected to fail")
    ap.add_argument("--timeout", type=int, help="whole-run limit in seconds (SYTEST_TIMEOUT)")
    ap.add_argument(
        "--impl-name",
        default=os.environ.get("SYTEST_HS_IMPL_NAME") or "synapse",
        help="SyTest's implementation name for the External plugin (default synapse: Starling"
        " serves the Synapse admin API, so SyTest's tests tagged for Synapse run too;"
        " 'external' leaves them out)",
    )
    ap.add_argument(
        "--no-install-deps",
        action="store_true",
        help="never apt-get SyTest's Perl dependencies (default: install them when missing"
        " and running as root)",
    )
    ap.add_argument("sytest_args", nargs="*", help="after --: run-tests.pl arguments")
    args = ap.parse_args(argv)

    peer = Path(args.peer_suites).resolve()
    runner = peer / "sytest" / "run-sytest.sh"
    if not runner.is_file():
        print(
            f"sytest: {runner} not found; point --peer-suites or PEER_SUITES at the"
            " peer-suites folder",
            file=sys.stderr,
        )
        return 2
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env.setdefault("SYTEST_SRC", str(peer / "sources" / "sytest.bundle"))
    env.setdefault("NAHS_SRC", str(peer / "sources" / "nahs.bundle"))
    env["SYTEST_WORK"] = str(work)
    # run-sytest.sh clones the bundles; keep git's detached-HEAD advice out of the log.
    env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="advice.detachedHead")
    env["GIT_CONFIG_VALUE_0"] = "false"
    if args.timeout:
        env["SYTEST_TIMEOUT"] = str(args.timeout)
    if args.postgres:
        env["STARLING_SYTEST_POSTGRES"] = args.postgres
    else:
        env.pop("STARLING_SYTEST_POSTGRES", None)
    # The adapter runs Starling from this tree, with this interpreter (the venv's).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))

    # `exec`: the adapter replaces SyTest's /bin/sh, so SyTest's SIGINT reaches a process that
    # waits for Starling to drain rather than a shell it kills.
    hs_command = "exec " + shlex.join([sys.executable, str(ADAPTER)])
    cmd = ["bash", str(runner), "--hs-command", hs_command, "--hs-impl-name", args.impl_name]
    if not args.no_install_deps and perl_deps_missing(runner, env):
        if not install_deps_allowed():
            print(
                "sytest: SyTest's Perl modules are missing and this is not root; run"
                f" `sudo bash {runner} --install-deps --hs-command true` once (or apt-get"
                " the packages it names)",
                file=sys.stderr,
            )
            return 2
        print("sytest: installing SyTest's Debian dependencies (apt-get)", flush=True)
        subprocess.run(["apt-get", "update", "-q"], check=True)
        cmd.append("--install-deps")

    sytest_args = list(args.sytest_args)
    expected: dict[str, str] = {}
    if args.expected_failures:
        expected = read_expected_failures(args.expected_failures)
        sytest_args += ["-B", str(args.expected_failures.resolve())]

    results = run_suite(cmd, sytest_args, env, work)
    if results is None:
        return 2
    outcomes = parse_tap((results / "sytest.tap").read_text(encoding="utf-8", errors="replace"))
    if not args.expected_failures:
        return 0
    full_run = not any(a.endswith(".pl") for a in args.sytest_args)
    code, report = compare(outcomes, expected, full_run)
    if code and full_run:
        # SyTest has timing-sensitive tests: a failure not on the list is run once more, in
        # its own file, before it counts. A test that passes then is named as flaky.
        files = test_files_for(outcomes.failed, work / "sytest" / "tests")
        if files:
            print(f"sytest: running {len(files)} file(s) again for the new failures", flush=True)
            retry = run_suite(cmd, [*sytest_args, *files], env, work)
            if retry is not None:
                again = parse_tap(
                    (retry / "sytest.tap").read_text(encoding="utf-8", errors="replace")
                )
                outcomes = outcomes_after_retry(outcomes, again)
                code, report = compare(outcomes, expected, full_run)
    (results / "expected-failures-check.txt").write_text(report + "\n", encoding="utf-8")
    print(report)
    return code


def run_suite(
    cmd: list[str], sytest_args: list[str], env: dict[str, str], work: Path
) -> Path | None:
    """Run SyTest once; the run's results folder (also linked as results/latest), or None
    when it did not run to the end."""
    if sytest_args:
        cmd = [*cmd, "--", *sytest_args]
    before = set(os.listdir(work / "results")) if (work / "results").is_dir() else set()
    print("sytest: " + shlex.join(cmd), flush=True)
    rc = subprocess.run(cmd, env=env).returncode
    runs = sorted(set(os.listdir(work / "results")) - before - {"latest"})
    if not runs:
        print(f"sytest: run-sytest.sh exited {rc} before starting a run", file=sys.stderr)
        return None
    results = work / "results" / runs[-1]
    latest = work / "results" / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(results.name)
    print(f"sytest: results in {results}")
    if rc != 0:
        print(
            f"sytest: SyTest did not run to the end (exit {rc}); see {results}/sytest.stderr",
            file=sys.stderr,
        )
        return None
    return results


def test_files_for(names: set[str], tests_dir: Path) -> list[str]:
    """The SyTest files (relative to the SyTest checkout) that declare these test names."""
    if not tests_dir.is_dir():
        return []
    quoted = [(f'"{n}"', f"'{n}'") for n in names]
    found: list[str] = []
    for path in sorted(tests_dir.rglob("*.pl")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if any(d in text or s in text for d, s in quoted):
            found.append(str(path.relative_to(tests_dir.parent)))
    return found


def outcomes_after_retry(first: Outcomes, retry: Outcomes) -> Outcomes:
    """The first run's outcomes with its new failures that passed on the retry counted as
    passed (flaky); a failure the retry did not run, or that failed again, stays."""
    flaky = first.failed & retry.passed
    for name in sorted(flaky):
        print(f"sytest: FLAKY (passed on retry): {name}", flush=True)
    return replace(first, failed=first.failed - flaky, passed=first.passed | flaky)


if __name__ == "__main__":
    sys.exit(main())
