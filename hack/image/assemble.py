"""Assemble the image's root filesystem: the venv, and only what its Python runs on.

Run by the Containerfile's build stage with the base image's python3 (stdlib only):

    python3 hack/image/assemble.py /opt/asklepios /rootfs

The final stage is FROM scratch plus this tree, so the image holds no shell, no package
manager, no docs or locales: the interpreter and the standard library (without its test
suite, IDLE, tkinter and other modules a daemon never imports), the shared libraries that
the interpreter and every extension module link (found with ldd, plus libgcc_s, which
glibc loads at thread exit), the CA bundle and OpenSSL's config, /etc/passwd and
/etc/group with the user 65532, and an empty /tmp (the Deployment mounts one there).
Paths stay where the base has them, so the venv's symlink to the interpreter resolves.
"""

from __future__ import annotations

import compileall
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Parts of the standard library a daemon never imports (tests alone are ~30 MB).
STDLIB_DROP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "venv",
    "config-3.11-x86_64-linux-gnu",
    "__phello__",
    "unittest/test",
    "sqlite3/test",
    "ctypes/test",
    "distutils/tests",
    "tkinter/test",
}
# Extension modules of the standard library that nothing here imports, and that would
# bring their own libraries (Berkeley DB, ncurses, readline, Kerberos through NIS, Tk).
DYNLOAD_DROP = {
    "nis",
    "_dbm",
    "_gdbm",
    "_curses",
    "_curses_panel",
    "readline",
    "_tkinter",
    "_sqlite3",
    "_ctypes_test",
    "_testcapi",
    "_testinternalcapi",
    "_testbuffer",
    "_testimportmultiple",
    "_testmultiphase",
    "_xxtestfuzz",
    "xxlimited",
    "xxlimited_35",
    "_testclinic",
}
# In the venv: packages' own test suites, type stubs, C/Cython sources and docs
# (the .dist-info metadata, which pip list and the SBOM read, stays whole).
VENV_DROP_DIRS = {"tests", "test"}
VENV_DROP_SUFFIXES = (".pyi", ".c", ".h", ".cpp", ".pyx", ".pxd", ".md", ".rst")
ALWAYS = ["libgcc_s.so.1"]  # dlopen()ed by glibc for pthread_exit/cancel: ldd cannot see it
FILES = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/usr/lib/ssl/openssl.cnf",
    "/usr/lib/ssl/certs",
    "/etc/ssl/openssl.cnf",
]
LIB_DIRS = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]


def copy(src: str, dest: Path) -> None:
    """Copy one path into dest at the same place: every symlink on the way (and its
    target) as a symlink, directories created, files with their modes and times."""
    parts = Path(src).parts
    current = Path("/")
    for index, part in enumerate(parts[1:], start=2):
        current = current / part
        target = dest / current.relative_to("/")
        if current.is_symlink():
            if not target.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                link = os.readlink(current)
                target.symlink_to(link)
                copy(os.path.normpath(current.parent / link), dest)
            current = Path(os.path.realpath(current))
            continue
        if index == len(parts):  # the path itself, not a directory on the way
            if current.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(current, target)


def copy_tree(src: Path, dest: Path, drop: set[str] = frozenset(), *, venv: bool = False) -> None:  # type: ignore[assignment]
    for root, dirs, found in os.walk(src):
        rel = Path(root).relative_to(src)
        files = found
        dirs[:] = [d for d in dirs if str(rel / d) not in drop and d not in drop]
        if venv and "site-packages" in rel.parts:
            dirs[:] = [d for d in dirs if d not in VENV_DROP_DIRS]
            if not root.endswith(".dist-info"):
                files = [f for f in files if not f.endswith(VENV_DROP_SUFFIXES)]
        copy(root, dest)
        for name in files:
            if str(rel / name) in drop or name in drop:
                continue
            if name.endswith(".so") and name.split(".")[0] in DYNLOAD_DROP:
                continue
            path = Path(root) / name
            copy(str(path), dest)


def libraries(paths: list[Path]) -> set[str]:
    """Every shared library these executables and extension modules link, per ldd."""
    found: set[str] = set()
    for path in paths:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            match = re.search(r"(?:=> )?(/\S+) \(0x", line)
            if match:
                found.add(match.group(1))
    for name in ALWAYS:
        found.update(str(Path(d) / name) for d in LIB_DIRS if (Path(d) / name).exists())
    return found


def main(venv: str, out: str) -> None:
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = Path(sysconfig.get_paths()["platstdlib"]) / "lib-dynload"
    interpreter = os.path.realpath(sys.executable)
    copy(str(Path(venv) / "bin" / "python"), dest)  # the venv's links to the interpreter
    copy(interpreter, dest)
    copy_tree(stdlib, dest, STDLIB_DROP)
    if dynload.exists() and stdlib not in dynload.parents:
        copy_tree(dynload, dest)
    copy_tree(Path(venv), dest, venv=True)
    binaries = [Path(interpreter)]
    for root in (dest / stdlib.relative_to("/"), dest / Path(venv).relative_to("/"), dest / dynload.relative_to("/")):
        binaries += [p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    for library in sorted(libraries(binaries)):
        copy(library, dest)
    for path in FILES:
        if os.path.lexists(path):
            copy(path, dest)
    etc = dest / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
    )
    (etc / "group").write_text("root:x:0:\nnonroot:x:65532:\n")
    (dest / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    # Bytecode for everything, so a read-only root filesystem costs no compile at start.
    for root in (stdlib, Path(venv)):
        compileall.compile_dir(dest / root.relative_to("/"), quiet=1, stripdir=str(dest), prependdir="/", workers=0)


if __name__ == "__main__":
    main(*sys.argv[1:])
