"""One source of requirements: pyproject.toml. The locks (`make lock`) must be compiled from it as it is."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from rowcall_local.stack import PROJECT_ROOT

PYPROJECT = "rowcall (pyproject.toml)"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass
class Pin:
    version: str
    hashes: int = 0
    via: list[str] = field(default_factory=list)


def read_lock(path: Path) -> dict[str, Pin]:
    """Package -> pin, with its hashes counted and uv's `# via` annotations."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        found = _PIN.match(line)
        if found:
            current = pins[canonicalize_name(found.group(1))] = Pin(found.group(2))
        elif current is not None and "--hash=sha256:" in line:
            current.hashes += 1
        elif current is not None and line.strip().startswith("#"):
            text = line.strip().lstrip("#").strip()
            current.via.append(text.removeprefix("via").strip())
    return pins


def project() -> dict[str, list[Requirement]]:
    data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"": [Requirement(r) for r in data["dependencies"]]}
    for extra, requirements in data["optional-dependencies"].items():
        groups[extra] = [Requirement(r) for r in requirements]
    return groups


def _direct(pins: dict[str, Pin]) -> set[str]:
    return {name for name, pin in pins.items() if PYPROJECT in pin.via}


def test_the_layer_installs_exactly_the_projects_runtime_requirements() -> None:
    layer = read_lock(PROJECT_ROOT / "layers" / "rowcall" / "requirements.txt")
    runtime = project()[""]
    assert _direct(layer) == {canonicalize_name(r.name) for r in runtime}, "run `make lock`"
    for requirement in runtime:
        pinned = layer[canonicalize_name(requirement.name)].version
        assert requirement.specifier.contains(pinned), f"{requirement}: layer pins {pinned}; run `make lock`"


def test_the_layer_ships_the_versions_the_tests_ran() -> None:
    layer = read_lock(PROJECT_ROOT / "layers" / "rowcall" / "requirements.txt")
    dev = read_lock(PROJECT_ROOT / "requirements" / "dev.lock")
    for name, pin in layer.items():
        assert name in dev, f"{name} is in the layer but not in the dev lock"
        assert pin.version == dev[name].version, f"{name}: layer {pin.version}, dev {dev[name].version}"


def test_the_dev_lock_is_compiled_from_pyproject_as_it_is() -> None:
    dev = read_lock(PROJECT_ROOT / "requirements" / "dev.lock")
    wanted = [r for group, rs in project().items() for r in rs if canonicalize_name(r.name) != "rowcall"]
    assert _direct(dev) == {canonicalize_name(r.name) for r in wanted}, "run `make lock`"
    for requirement in wanted:
        pinned = dev[canonicalize_name(requirement.name)].version
        assert requirement.specifier.contains(pinned), (
            f"{requirement}: dev lock pins {pinned}; run `make lock`"
        )


def test_the_runtime_lock_is_the_local_and_client_extras_at_the_dev_locks_versions() -> None:
    """`make demo` installs requirements/runtime.lock alone; `make test` adds the dev lock on top, so
    the two must agree on every version (or the dev install would swap packages under the demo)."""
    runtime = read_lock(PROJECT_ROOT / "requirements" / "runtime.lock")
    dev = read_lock(PROJECT_ROOT / "requirements" / "dev.lock")
    groups = project()
    wanted = [r for group in ("", "local", "client") for r in groups[group]]
    assert _direct(runtime) == {canonicalize_name(r.name) for r in wanted}, "run `make lock`"
    for requirement in wanted:
        pinned = runtime[canonicalize_name(requirement.name)].version
        assert requirement.specifier.contains(pinned), f"{requirement}: runtime {pinned}; run `make lock`"
    for name, pin in runtime.items():
        assert name in dev, f"{name} is in the runtime lock but not in the dev lock"
        assert pin.version == dev[name].version, f"{name}: runtime {pin.version}, dev {dev[name].version}"
    # The weight the demo used to install (issue 18: 95 s of pip). cfn-lint stays: moto[server] needs it.
    assert {"pytest", "mypy", "playwright", "schemathesis"} & set(runtime) == set()


def test_uv_is_installed_from_a_hashed_pin() -> None:
    (pin,) = read_lock(PROJECT_ROOT / "requirements" / "uv.lock").items()
    assert pin[0] == "uv" and f"uv=={pin[1].version}" in (PROJECT_ROOT / "requirements" / "uv.in").read_text()


def test_every_pin_has_hashes() -> None:
    for lock in (
        "requirements/dev.lock",
        "requirements/runtime.lock",
        "requirements/checkov.lock",
        "requirements/uv.lock",
        "layers/rowcall/requirements.txt",
    ):
        pins = read_lock(PROJECT_ROOT / lock)
        assert pins, lock
        assert all(pin.hashes for pin in pins.values()), f"{lock}: a pin without hashes"


def test_moto_stays_below_its_next_minor() -> None:
    """The local stack's fidelity patches reach into moto's internals (moto_fidelity.py, strict_*.py,
    aws_faults.py, iam_enforcement.py): a new minor is an upgrade to make on purpose."""
    (moto,) = [r for r in project()["local"] if r.name == "moto"]
    assert not moto.specifier.contains("5.3.0") and moto.specifier.contains("5.2.5")
    pinned = Version(read_lock(PROJECT_ROOT / "requirements" / "dev.lock")["moto"].version)
    assert (pinned.major, pinned.minor) == (5, 2)
