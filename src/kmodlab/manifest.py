"""Kernel module manifests: ``modules/NAME/module.yml``, the single source of truth.

A manifest says what a module is (name, version, license, sources), its parameters,
the parameters the lab loads it with, and everything that must be observable once it
is loaded. ``dkms.conf``, load parameters and the testinfra suite are all derived from
it. Validation errors name the file and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from ansible_collections.kmodlab.lab.plugins.module_utils.params import major_number
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

MANIFEST_FILE = "module.yml"

ParamType = Literal[
    "byte", "short", "ushort", "int", "uint", "long", "ulong", "charp", "bool", "invbool"
]
Scalar = int | str | bool
ParamValue = Scalar | list[Scalar]

_INT_RANGES: dict[str, tuple[int, int]] = {
    "byte": (0, 2**8 - 1),
    "short": (-(2**15), 2**15 - 1),
    "ushort": (0, 2**16 - 1),
    "int": (-(2**31), 2**31 - 1),
    "uint": (0, 2**32 - 1),
    "long": (-(2**63), 2**63 - 1),
    "ulong": (0, 2**64 - 1),
}

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
ModuleName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,54}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[0-9][0-9A-Za-z.+~-]*$")]
Mode = Annotated[str, StringConstraints(pattern=r"^0[0-7]{3}$")]
AbsPath = Annotated[str, StringConstraints(pattern=r"^/.*$")]


class ManifestError(ValueError):
    """A manifest that cannot be read or does not validate. The message names file and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


def check_value(ptype: ParamType, value: Any) -> Scalar:
    """Return ``value`` if the kernel would accept it for a parameter of ``ptype``."""
    if ptype in ("bool", "invbool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in ("Y", "N", "y", "n", "1", "0"):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a {ptype} (use true/false)")
    if ptype == "charp":
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"{value!r} is not a string")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer ({ptype})")
    low, high = _INT_RANGES[ptype]
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range for {ptype} ({low}..{high})")
    return value


class Parameter(_Model):
    """A module parameter as the kernel knows it (``module_param`` / ``module_param_array``)."""

    name: Identifier
    type: ParamType
    array: bool = False
    max_count: int | None = Field(default=None, ge=1, description="array capacity")
    counted: bool = Field(
        default=True,
        description="array with a count variable (module_param_array(name, type, &count, "
        "perm)); false for a fixed-size array without one (NULL): sysfs then shows all "
        "max_count elements, the ones not given keeping their initial values, so default "
        "lists all max_count of them",
    )
    default: ParamValue
    perm: Mode = "0000"
    description: str
    log: str | None = Field(
        default=None,
        description="regex with a group named value matching the module's own kernel "
        "message that prints this parameter's value; only for parameters sysfs does not "
        "show (perm 0000), whose value is otherwise not observable",
    )

    @field_validator("perm")
    @classmethod
    def _not_world_writable(cls, value: str) -> str:
        if int(value, 8) & 0o002:
            raise ValueError("the kernel refuses world-writable parameters (o+w)")
        return value

    @field_validator("log")
    @classmethod
    def _log_regex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "value" not in re.compile(_regex(value)).groupindex:
            raise ValueError("log needs a named group (?P<value>...) around the printed value")
        return value

    @model_validator(mode="after")
    def _default_matches_type(self) -> Parameter:
        self.validate_value(self.default, field="default")
        if self.array and self.max_count is None:
            raise ValueError("array parameters need max_count")
        if not self.counted:
            if not self.array:
                raise ValueError("counted: false is for array parameters only")
            # validate_value above made sure an array's default is a list
            if isinstance(self.default, list) and len(self.default) != self.max_count:
                raise ValueError(
                    f"{self.name} is a fixed-size array (counted: false): sysfs shows all "
                    f"{self.max_count} elements, so default must list all {self.max_count} "
                    f"initial values, it has {len(self.default)}"
                )
        if self.log is not None and self.visible:
            raise ValueError(
                f"log is for parameters sysfs does not show (perm 0000); {self.name} has "
                f"perm {self.perm} and is read from /sys/module"
            )
        return self

    @property
    def visible(self) -> bool:
        """Whether the parameter shows in ``/sys/module/NAME/parameters``."""
        return int(self.perm, 8) != 0

    def validate_value(self, value: Any, field: str = "value") -> ParamValue:
        if self.array:
            if not isinstance(value, list):
                raise ValueError(f"{field} of array parameter {self.name} must be a list")
            if self.max_count is not None and len(value) > self.max_count:
                raise ValueError(
                    f"{field} of {self.name} has {len(value)} elements, at most {self.max_count}"
                )
            return [check_value(self.type, v) for v in value]
        if isinstance(value, list):
            raise ValueError(f"{field} of {self.name} must be a single {self.type}, not a list")
        return check_value(self.type, value)


class ProcDevice(_Model):
    """An entry of ``/proc/devices``."""

    name: str
    kind: Literal["char", "block"] = "char"
    major: int | Literal["dynamic"] = "dynamic"
    major_param: Identifier | None = Field(
        default=None, description="parameter that sets the major (its live value is expected)"
    )


class DevNode(_Model):
    """A ``/dev`` node; its major must equal the one of ``device`` in ``/proc/devices``."""

    path: AbsPath
    type: Literal["char", "block"] = "char"
    device: str = Field(description="name of the proc_devices entry it belongs to")
    minor: int = Field(default=0, ge=0)
    mode: Mode | None = None


class PathCheck(_Model):
    """A sysfs or /proc path that must exist, with mode and content."""

    path: AbsPath
    kind: Literal["file", "directory"] = "file"
    mode: Mode | None = None
    content: str | None = Field(default=None, description="regex the content must match")

    @field_validator("content")
    @classmethod
    def _content_regex(cls, value: str | None) -> str | None:
        return value if value is None else _regex(value)


class Dmesg(_Model):
    load: list[str] = []
    unload: list[str] = []

    @field_validator("load", "unload")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        return [_regex(v) for v in value]


class IoctlRequest(_Model):
    """An ioctl request number as the kernel's _IO/_IOR/_IOW/_IOWR encode it (x86-64)."""

    dir: Literal["none", "write", "read", "readwrite"]
    type: str = Field(min_length=1, max_length=1, description="the magic character")
    nr: int = Field(ge=0, le=255)
    size: int = Field(default=0, ge=0, lt=2**14)


class IntArg(_Model):
    """A pointer to a 4-byte signed int holding ``int``, read back after the call."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    value: int = Field(alias="int", ge=-(2**31), lt=2**31)


class StringArg(_Model):
    """A pointer to a zero-padded buffer of ``size`` bytes holding ``string``."""

    string: str
    size: int = Field(ge=1, le=65536)

    @model_validator(mode="after")
    def _fits(self) -> StringArg:
        if len(self.string.encode()) > self.size:
            raise ValueError(f"string is longer than size {self.size}")
        return self


STEP_OPS = ("open", "close", "read", "write", "ioctl", "wait", "poll", "run")
# Which fields each op takes (besides op, error, and blocks where allowed).
_STEP_FIELDS: dict[str, set[str]] = {
    "open": {"path", "as_", "flags"},
    "close": {"handle"},
    "read": {"path", "handle", "size", "expect"},
    "write": {"path", "handle", "data"},
    "ioctl": {"path", "handle", "request", "arg", "expect_return", "expect_value", "expect"},
    "wait": {"for_", "timeout"},
    "poll": {"path", "dmesg", "expect", "timeout"},
    "run": {"argv", "rc", "expect", "timeout"},
}
_BLOCKING_OPS = ("open", "read", "ioctl")
_OPEN_FLAGS = {
    "O_RDONLY",
    "O_WRONLY",
    "O_RDWR",
    "O_NONBLOCK",
    "O_APPEND",
    "O_SYNC",
    "O_DSYNC",
    "O_EXCL",
    "O_NOCTTY",
    "O_CLOEXEC",
    "O_DIRECT",
    "O_TRUNC",
}


class Step(_Model):
    """One step of a functional check, run on the target by the verify collector.

    ``open`` keeps a handle (``as``) for later ``read``/``write``/``ioctl``/``close``
    steps; ``read``, ``write`` and ``ioctl`` take a ``path`` or a ``handle``. A step
    with ``error`` must fail with that errno; any other must succeed. ``blocks: NAME``
    (open, read, ioctl) runs the step in the background: it must still be running
    ``block_ms`` later, and a later ``wait`` step (``for: NAME``) waits for it and
    checks its expectations. ``poll`` re-reads a path, or the kernel log, until
    ``expect`` matches; ``run`` runs a command. docs/manifest.md describes each.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    op: Literal["open", "close", "read", "write", "ioctl", "wait", "poll", "run"]
    path: AbsPath | None = None
    handle: Identifier | None = None
    as_: Identifier | None = Field(default=None, alias="as", description="handle name")
    flags: list[str] = Field(default=["O_RDONLY"], description="os.O_* names (open)")
    data: str | None = Field(default=None, description="bytes to write (write only)")
    size: int = Field(default=4096, ge=1, le=1 << 20, description="bytes to read at most")
    expect: str | None = Field(default=None, description="regex the result must match")
    error: str | None = Field(
        default=None, pattern=r"^E[A-Z0-9]+$", description="errno name the step must fail with"
    )
    request: int | IoctlRequest | None = None
    arg: int | IntArg | StringArg | None = None
    expect_return: int | None = None
    expect_value: int | None = None
    blocks: Identifier | None = Field(
        default=None, description="run in the background under this name; must block"
    )
    block_ms: int = Field(default=500, ge=50, le=10000)
    for_: Identifier | None = Field(default=None, alias="for", description="wait: step name")
    timeout: float | None = Field(default=None, gt=0, le=60)
    dmesg: bool = False
    argv: list[str] | None = Field(default=None, min_length=1)
    rc: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> Step:
        allowed = _STEP_FIELDS[self.op] | {"op", "error"}
        if self.op in _BLOCKING_OPS:
            allowed |= {"blocks", "block_ms"}
        fields = type(self).model_fields
        extra = sorted((fields[f].alias or f) for f in self.model_fields_set if f not in allowed)
        if extra:
            raise ValueError(f"a {self.op} step takes no {', '.join(extra)}")
        if self.op in ("read", "write", "ioctl") and (self.path is None) == (self.handle is None):
            raise ValueError(f"a {self.op} step needs exactly one of path and handle")
        needs = {
            "open": ("path", "as_"),
            "close": ("handle",),
            "write": ("data",),
            "ioctl": ("request",),
            "wait": ("for_",),
            "poll": ("expect",),
            "run": ("argv",),
        }.get(self.op, ())
        missing = [(fields[f].alias or f) for f in needs if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.op} step needs {', '.join(missing)}")
        if self.op == "poll" and (self.path is None) == (not self.dmesg):
            raise ValueError("a poll step reads either a path or the kernel log (dmesg: true)")
        if self.op == "poll" and self.error is not None:
            raise ValueError("a poll step cannot expect an error")
        unknown = [f for f in self.flags if f not in _OPEN_FLAGS]
        if unknown:
            raise ValueError(f"unknown open flags {unknown} (known: {sorted(_OPEN_FLAGS)})")
        if self.expect is not None:
            _regex(self.expect)
        return self


class Functional(_Model):
    name: str
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> Functional:
        handles: set[str] = set()
        pending: set[str] = set()
        for number, step in enumerate(self.steps, start=1):
            where = f"step {number} ({step.op})"
            if step.handle is not None and step.handle not in handles:
                raise ValueError(
                    f"{where}: handle {step.handle!r} is not opened by an earlier step"
                )
            if step.op == "close" and step.handle is not None:
                handles.discard(step.handle)
            if step.op == "wait":
                if step.for_ not in pending:
                    raise ValueError(f"{where}: no earlier step blocks as {step.for_!r}")
                pending.discard(step.for_)
            if step.blocks is not None:
                if step.blocks in pending:
                    raise ValueError(f"{where}: {step.blocks!r} is already blocking")
                pending.add(step.blocks)
            if step.as_ is not None:
                handles.add(step.as_)
        if pending:
            raise ValueError(f"steps that block are never waited for: {sorted(pending)}")
        return self


class Expect(_Model):
    """Everything that must be observable while the module is loaded."""

    proc_devices: list[ProcDevice] = []
    dev_nodes: list[DevNode] = []
    sysfs: list[PathCheck] = []
    procfs: list[PathCheck] = []
    dmesg: Dmesg = Dmesg()
    modinfo: dict[str, str] = Field(
        default_factory=dict, description="modinfo field -> regex (license, author, ...)"
    )
    functional: list[Functional] = []

    @field_validator("sysfs")
    @classmethod
    def _under_sys(cls, value: list[PathCheck]) -> list[PathCheck]:
        for item in value:
            if not item.path.startswith("/sys/"):
                raise ValueError(f"{item.path} is not under /sys")
        return value

    @field_validator("procfs")
    @classmethod
    def _under_proc(cls, value: list[PathCheck]) -> list[PathCheck]:
        for item in value:
            if not item.path.startswith("/proc/"):
                raise ValueError(f"{item.path} is not under /proc")
        return value

    @field_validator("modinfo")
    @classmethod
    def _modinfo_regexes(cls, value: dict[str, str]) -> dict[str, str]:
        return {k: _regex(v) for k, v in value.items()}


class PathSource(_Model):
    """A folder on the controller: absolute, or relative to the manifest's folder (e.g. a
    ``*-dkms`` package's ``/usr/src/NAME-VERSION``)."""

    path: str = Field(min_length=1)


class GitSource(_Model):
    """A git repository at a ref (branch, tag or commit), fetched on the controller."""

    git: str = Field(min_length=1, description="clone URL")
    ref: str = Field(min_length=1, pattern=r"^[^\s~^:?*\[\\]+$")
    subdir: str | None = Field(default=None, description="the package's folder in the repository")


class TarballSource(_Model):
    """A tarball fetched by URL, checked against its sha256 before it is unpacked."""

    url: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    subdir: str | None = Field(default=None, description="the package's folder in the tarball")


Source = PathSource | GitSource | TarballSource


class PackageSpec(_Model):
    """The DKMS package the module is built in, when it is not one of our own.

    A third-party package (``source`` set) is built as its own ``dkms.conf`` says: its
    package name may differ from its modules' names, and it may build several ``.ko``
    files; each of them gets its own manifest naming the same package.
    """

    name: ModuleName | None = Field(
        default=None, description="PACKAGE_NAME in its dkms.conf; default the manifest's name"
    )
    source: Source | None = Field(
        default=None,
        description="where the package's tree is (with its own dkms.conf); default the "
        "manifest's sources beside it",
    )


class Lab(_Model):
    """How the teaching lab loads the module."""

    params: dict[str, ParamValue] = {}


class Manifest(_Model):
    name: ModuleName = Field(description="DKMS package name; also the folder and .ko name")
    version: Version
    description: str
    license: str
    author: str
    sources: list[str] = Field(
        default=[], description="files beside module.yml; none with package.source"
    )
    package: PackageSpec = PackageSpec()
    depends: list[ModuleName] = Field(
        default=[],
        description="modules of the same folder whose exported symbols this one uses: "
        "built before it (dkms.conf BUILD_DEPENDS, their Module.symvers in "
        "KBUILD_EXTRA_SYMBOLS), loaded before it and unloaded after it, and selected "
        "with it",
    )
    parameters: list[Parameter] = []
    lab: Lab = Lab()
    expect: Expect = Expect()

    @property
    def kmod(self) -> str:
        """The name the running kernel uses (``/sys/module``, ``/proc/modules``)."""
        return self.name.replace("-", "_")

    @property
    def package_name(self) -> str:
        """The DKMS package the module is built in (its dkms.conf's PACKAGE_NAME)."""
        return self.package.name or self.name

    def param(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.parameters) or "none"
        raise KeyError(f"module {self.name} has no parameter {name!r} (known: {known})")

    def validate_params(self, params: dict[str, Any]) -> dict[str, ParamValue]:
        """Check wanted load parameters against the declared ones; raise ValueError."""
        out: dict[str, ParamValue] = {}
        for key, value in params.items():
            try:
                param = self.param(key)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
            try:
                out[key] = param.validate_value(value, field=f"parameter {key}")
            except ValueError as exc:
                raise ValueError(f"parameter {key} of {self.name}: {exc}") from None
        return out

    @model_validator(mode="after")
    def _cross_checks(self) -> Manifest:
        names = [p.name for p in self.parameters]
        if len(names) != len(set(names)):
            raise ValueError("parameters: duplicate parameter names")
        self.validate_params(dict(self.lab.params))
        devices = {d.name: d for d in self.expect.proc_devices}
        for dev in self.expect.proc_devices:
            if dev.major_param is not None:
                p = self.param(dev.major_param)
                if p.type not in ("int", "uint", "short", "ushort") or p.array:
                    raise ValueError(f"major_param {p.name} must be an integer parameter")
        for node in self.expect.dev_nodes:
            if node.device not in devices:
                raise ValueError(
                    f"dev node {node.path} names device {node.device!r}, "
                    f"not in expect.proc_devices ({', '.join(devices) or 'none'})"
                )
            if devices[node.device].kind != node.type:
                raise ValueError(f"dev node {node.path} is {node.type}, its device is not")
        if self.name in self.depends:
            raise ValueError("depends: a module cannot depend on itself")
        if self.package.source is None:
            if not self.sources:
                raise ValueError("sources: list the module's files beside module.yml")
            if self.package.name not in (None, self.name):
                raise ValueError(
                    "package.name: a package of its own is named as the module; a different "
                    "package name needs package.source (the third-party package's tree)"
                )
        else:
            if self.sources:
                raise ValueError(
                    "sources: a module of a third-party package (package.source) takes the "
                    "package's whole tree; leave sources out"
                )
            if self.depends:
                raise ValueError(
                    "depends: a third-party package is built as its dkms.conf says "
                    "(BUILD_DEPENDS); manifests of its modules name no depends"
                )
        return self

    def wanted_params(self, overrides: dict[str, Any] | None = None) -> dict[str, ParamValue]:
        """The lab parameters with ``overrides`` applied (overrides win), validated."""
        merged: dict[str, Any] = dict(self.lab.params)
        merged.update(overrides or {})
        return self.validate_params(merged)

    def expected_major(self, dev: ProcDevice, params: dict[str, Any]) -> int | None:
        """The major ``dev`` must have given load ``params``; None when the kernel
        chooses (``major: dynamic``, or a major parameter of 0), as
        module_utils/params.py's ``major_number`` says for the probe and the checks."""
        if dev.major_param is not None:
            value = params.get(dev.major_param, self.param(dev.major_param).default)
            return major_number(value)
        return major_number(dev.major)


def _format_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid manifest ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"  - field {loc}: {err['msg']}")
    return "\n".join(lines)


def load_manifest(path: Path) -> Manifest:
    """Read and validate one manifest file (or a module folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest file") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: a manifest is a YAML mapping, got {type(raw).__name__}")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(_format_error(path, exc)) from None
    if manifest.name != path.parent.name:
        raise ManifestError(
            f"{path}: field name: {manifest.name!r} must equal its folder name {path.parent.name!r}"
        )
    for src in manifest.sources:
        if not (path.parent / src).is_file():
            raise ManifestError(f"{path}: field sources: {src} does not exist beside it")
    source = manifest.package.source
    if isinstance(source, PathSource):
        tree = (path.parent / source.path).resolve()
        if not (tree / "dkms.conf").is_file():
            raise ManifestError(
                f"{path}: field package.source.path: {tree} has no dkms.conf (a third-party "
                "package is built as its own dkms.conf says)"
            )
    return manifest


def load_all(modules_dir: Path) -> dict[str, Manifest]:
    """All manifests under ``modules_dir``, by name; checks dependencies exist."""
    manifests: dict[str, Manifest] = {}
    for path in sorted(Path(modules_dir).glob(f"*/{MANIFEST_FILE}")):
        m = load_manifest(path)
        manifests[m.name] = m
    for m in manifests.values():
        for dep in m.depends:
            if dep not in manifests:
                raise ManifestError(
                    f"{modules_dir}/{m.name}/{MANIFEST_FILE}: field depends: unknown module {dep!r}"
                )
    return manifests


def load_order(manifests: dict[str, Manifest], selected: list[str]) -> list[str]:
    """``selected`` sorted so that every module comes after its dependencies."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ManifestError(f"dependency cycle through module {name!r}")
        if name not in manifests:
            raise ManifestError(
                f"unknown module {name!r}: no modules/{name}/{MANIFEST_FILE} "
                f"(known: {', '.join(sorted(manifests))})"
            )
        visiting.add(name)
        for dep in manifests[name].depends:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in sorted(selected):
        visit(name)
    return order
