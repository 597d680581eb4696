"""``tri-inductor cache export / import``: ship a warm cache to another machine, safely.

Trust model (docs/design/trust.md): an archive is untrusted input.  Its sha256 list lives in the
same archive, so it only catches accidents.  By default import brings only *inert data*, our tuning
DB, parsed and validated entry by entry and rewritten by us; the compiled artifacts (Inductor's
pickles and generated ``.py``, Triton cubins, vLLM's artifacts: anything that runs when loaded) are
skipped and rebuilt by the next compile.  They are imported only with ``trust=True`` *and* an
HMAC-SHA256 over the manifest that verifies with a key the user holds (named at export and
import), so only archives the key holder made are ever loaded.

Every import is bounded (member count, bytes per member, bytes in all), checks each member's
name and type against what its top folder may hold, and is all-or-nothing: members are written
to a staging folder next to their destination and moved in place only when all of them passed
(a destination folder that does not exist yet is one rename; into an existing one each file is
moved, and put back as it was if a move fails).
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from . import cache as C

ARCHIVE_FORMAT = 1
MANIFEST = "manifest.json"
HMAC_FIELD = "hmac_sha256"
ENV_KEY_FILE = "TRI_INDUCTOR_CACHE_KEY_FILE"  # default key file for export/import

# Limits (module constants so a user with a huge cache can raise them; tests lower them).
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_MANIFEST_BYTES = 64 << 20
MAX_TUNING_BYTES = 64 << 20
MAX_NAME = 512
MIN_KEY_BYTES = 16

TOPS = ("tuning", "inductor", "triton", "vllm")
INERT = ("tuning",)  # plain data we parse ourselves; every other top folder holds code
_TUNING_NAME = re.compile(r"^tuning/[0-9a-f]{16}\.json$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMPONENT = re.compile(r"^[A-Za-z0-9._+=@,-]+$")


class CacheError(C.CacheError):
    pass


# ----------------------------------------------------------------------------- keys / signing


def read_key(key_file: str | os.PathLike[str] | None = None) -> bytes | None:
    """The signing key from ``key_file``, else from the file named by TRI_INDUCTOR_CACHE_KEY_FILE,
    else None.  Raises :class:`CacheError` for an unreadable or short key."""
    path = key_file if key_file not in (None, "") else os.environ.get(ENV_KEY_FILE) or None
    if path is None:
        return None
    try:
        key = Path(path).expanduser().read_bytes().strip()
    except OSError as e:
        raise CacheError(f"cannot read the key file {path}: {e.strerror or e}") from None
    if len(key) < MIN_KEY_BYTES:
        raise CacheError(f"the key in {path} is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
                         "(e.g. `head -c 32 /dev/urandom | base64 > KEYFILE`)")
    return key


def _signed_bytes(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != HMAC_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(manifest: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, _signed_bytes(manifest), hashlib.sha256).hexdigest()


def verify(manifest: Mapping[str, Any], key: bytes) -> bool:
    mac = manifest.get(HMAC_FIELD)
    return isinstance(mac, str) and hmac.compare_digest(mac, sign(manifest, key))


# ----------------------------------------------------------------------------- export


def _files_under(base: Path) -> list[Path]:
    """Regular files under ``base``, never through a symlink (a link could point out of the cache)."""
    out: list[Path] = []
    if base.is_symlink() or not base.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                if stat.S_ISREG(p.lstat().st_mode) and not name.endswith((".lock", ".tmp")):
                    out.append(p)
    return out


def export(path: str | os.PathLike[str], include_vllm: bool = True,
           key_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write a ``.tar.gz`` holding this environment's tuning file, our Inductor/Triton folders and
    (``include_vllm``) vLLM's compile cache, with a manifest (environment key, sha256 of every
    file and, with a key, an HMAC over it).  Returns the manifest."""
    if path is None or str(path).strip() == "":
        raise CacheError("export needs an output file name (got an empty one)")
    key_bytes = read_key(key_file)
    root = C.cache_root()
    key = C.environment_key()
    members: list[tuple[str, Path]] = []  # (name in archive, file on disk)
    tfile = root / "tuning" / f"{C.key_id(key)}.json"
    if tfile.is_file() and not tfile.is_symlink() and C._decode(tfile, key):  # damaged: warned, not shipped
        members.append((f"tuning/{tfile.name}", tfile))
    bases = [("inductor", root / "inductor"), ("triton", root / "triton")]
    if include_vllm:
        bases.append(("vllm", C.vllm_compile_cache_dir()))
    for top, base in bases:
        for p in _files_under(base):
            members.append((f"{top}/{p.relative_to(base).as_posix()}", p))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        files: dict[str, str] = {}
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            # Members first, hashing the bytes we archive (a live server may rewrite a file
            # between two reads); the manifest, which import reads first, goes in a second tar.
            for arc, p in members:
                try:
                    data = p.read_bytes()
                except FileNotFoundError:  # removed by a live process meanwhile
                    continue
                files[arc] = hashlib.sha256(data).hexdigest()
                ti = tarfile.TarInfo(arc)
                ti.size, ti.mtime = len(data), int(time.time())
                tar.addfile(ti, io.BytesIO(data))
        manifest: dict[str, Any] = {"format": ARCHIVE_FORMAT, "tool": "tri_inductor",
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "key": key, "key_id": C.key_id(key), "files": files}
        if key_bytes is not None:
            manifest[HMAC_FIELD] = sign(manifest, key_bytes)
        _prepend_manifest(Path(tmp), manifest)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return manifest


def _prepend_manifest(tmp: Path, manifest: dict[str, Any]) -> None:
    """Rewrite ``tmp`` with the manifest as its first member (import refuses before reading the rest)."""
    blob = json.dumps(manifest, indent=1).encode()
    staged = tmp.with_name(tmp.name + ".2")
    try:
        with tarfile.open(tmp, "r:gz") as src, tarfile.open(staged, "w:gz") as dst:
            ti = tarfile.TarInfo(MANIFEST)
            ti.size, ti.mtime = len(blob), int(time.time())
            dst.addfile(ti, io.BytesIO(blob))
            for m in src:
                dst.addfile(m, src.extractfile(m))
        os.replace(staged, tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staged)


# ----------------------------------------------------------------------------- manifest


def _open_archive(path: str | os.PathLike[str]) -> tarfile.TarFile:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CacheError(f"{path}: no such file") from None
    except OSError as e:
        raise CacheError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CacheError(f"{path} is not a regular file (a device, pipe or folder); refusing it")
    try:
        return tarfile.open(p, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CacheError(f"{path} is not a tri_inductor cache archive or is damaged ({type(e).__name__}: {e})") from None


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The archive's manifest, checked for shape (every field the right type)."""
    try:
        with _open_archive(path) as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise CacheError(f"{path}: the first member is not {MANIFEST}; not a tri_inductor cache archive")
            if first.size > MAX_MANIFEST_BYTES:
                raise CacheError(f"{path}: manifest of {first.size} bytes (limit {MAX_MANIFEST_BYTES}); refusing it")
            f = tar.extractfile(first)
            manifest = json.loads(f.read() if f is not None else b"")
    except CacheError:
        raise
    except (tarfile.TarError, ValueError, OSError, EOFError, RecursionError) as e:
        raise CacheError(f"{path} is not a tri_inductor cache archive or is damaged "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    _check_manifest_shape(path, manifest)
    return manifest


def _check_manifest_shape(path, m: Any) -> None:
    def bad(why: str) -> CacheError:
        return CacheError(f"{path}: malformed manifest: {why}; refusing the archive")

    if not isinstance(m, dict) or m.get("tool") != "tri_inductor":
        raise CacheError(f"{path}: manifest is not a tri_inductor cache manifest")
    if m.get("format") != ARCHIVE_FORMAT:
        raise CacheError(f"{path}: archive format {m.get('format')!r}, this tri_inductor reads {ARCHIVE_FORMAT}")
    key = m.get("key")
    if not isinstance(key, dict) or not all(isinstance(key.get(k), str) for k in C.KEY_FIELDS):
        raise bad(f"'key' must be an object with string fields {', '.join(C.KEY_FIELDS)}")
    files = m.get("files")
    if not isinstance(files, dict):
        raise bad(f"'files' must be an object {{name: sha256}}, not {type(files).__name__}")
    if len(files) > MAX_MEMBERS:
        raise CacheError(f"{path}: {len(files)} files listed (limit {MAX_MEMBERS}); refusing the archive")
    for name, digest in files.items():
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise bad(f"the sha256 of {name!r} is not 64 hex digits")
        why = member_name_problem(name)
        if why:
            raise bad(f"{name!r} {why}")
    if HMAC_FIELD in m and not isinstance(m[HMAC_FIELD], str):
        raise bad(f"'{HMAC_FIELD}' must be a string")


def member_name_problem(name: Any) -> str | None:
    """Why ``name`` may not be a member, or None: a relative path of plain components under one
    of our top folders, with at least one name below it (``inductor/`` alone would replace the
    cache folder with a file); for tuning exactly ``tuning/<env-id>.json``, for Triton
    ``triton/<key>/<file>`` (Triton's own layout)."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    parts = name.split("/")
    if parts[0] not in TOPS:
        return f"is not under one of {', '.join(t + '/' for t in TOPS)}"
    if len(parts) < 2 or any(p in ("", ".", "..") or not _COMPONENT.match(p) for p in parts[1:]):
        return "is not a plain relative file path below its top folder"
    if parts[0] == "tuning" and not _TUNING_NAME.match(name):
        return "is not a tuning file (tuning/<16 hex digits>.json)"
    if parts[0] == "triton" and len(parts) != 3:
        return "is not a Triton cache file (triton/<key>/<file>)"
    return None


def check_compatible(manifest: Mapping[str, Any], here: Mapping[str, str] | None = None) -> None:
    """Raise :class:`CacheError` naming both sides if the archive's key is not this machine's."""
    here = C.environment_key() if here is None else here
    theirs = manifest["key"]
    diff = [k for k in C.KEY_FIELDS if str(theirs.get(k)) != str(here.get(k))]
    if diff:
        raise CacheError("refusing to import: the archive was made for " + C.describe_key(theirs)
                         + "; this machine has " + C.describe_key(here)
                         + f" (differs in: {', '.join(diff)}). Its kernels and tuning results would "
                         "not be valid here; build the cache on this machine instead.")


# ----------------------------------------------------------------------------- import


def import_(path: str | os.PathLike[str], trust: bool = False,
            key_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Import an archive made by :func:`export`.  Default: the tuning DB only (validated entry by
    entry), compiled artifacts skipped.  ``trust``: also the compiled artifacts, only if the
    manifest's HMAC verifies with the key (``key_file`` or TRI_INDUCTOR_CACHE_KEY_FILE).
    Raises :class:`CacheError` (nothing written).  Returns the manifest, with ``imported`` (names)
    and ``skipped`` (compiled artifacts left out) added."""
    manifest = read_manifest(path)
    check_compatible(manifest)
    expected: dict[str, str] = manifest["files"]
    if trust:
        key = read_key(key_file)
        if key is None:
            raise CacheError(f"--trust needs the key the archive was signed with (--key-file FILE or "
                             f"{ENV_KEY_FILE}); nothing imported")
        if HMAC_FIELD not in manifest:
            raise CacheError(f"{path} is not signed (exported without a key), so its compiled artifacts "
                             "cannot be verified; import it without --trust (tuning data only) or "
                             "export it again with --key-file; nothing imported")
        if not verify(manifest, key):
            raise CacheError(f"{path}: the manifest's signature does not verify with this key (made with "
                             "another key, or edited); nothing imported")
    wanted = {n for n in expected if trust or n.split("/", 1)[0] in INERT}
    skipped = sorted(set(expected) - wanted)
    root = C.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    dests = {"tuning": root / "tuning", "inductor": root / "inductor", "triton": root / "triton",
             "vllm": C.vllm_compile_cache_dir()}
    with _Staging(dests) as staging:
        seen = _extract(path, expected, wanted, staging)
        missing = set(expected) - seen
        if missing:
            raise CacheError(f"{path} is missing {len(missing)} file(s) listed in its manifest "
                             f"(e.g. {sorted(missing)[0]}); nothing imported")
        for name in sorted(n for n in wanted if n.startswith("tuning/")):
            _validate_tuning(path, staging.file(name), manifest)
        staging.commit()
    C.forget_loaded()
    return {**manifest, "imported": sorted(wanted), "skipped": skipped}


def _extract(path, expected: Mapping[str, str], wanted: set[str], staging: _Staging) -> set[str]:
    """Stream every member (bounded), hash it, stage the wanted ones; raise on anything unexpected."""
    seen: set[str] = set()
    count = total = 0
    try:
        with _open_archive(path) as tar:
            for m in tar:
                count += 1
                if count > MAX_MEMBERS + 1:
                    raise CacheError(f"{path}: more than {MAX_MEMBERS} members; refusing the archive")
                if m.name == MANIFEST and count == 1:
                    continue
                if m.name in seen:
                    raise CacheError(f"{path}: member {m.name!r} appears twice; refusing the archive")
                if not m.isfile() or m.name not in expected:
                    kind = "file" if m.isfile() else "link/folder/device"
                    raise CacheError(f"{path}: unexpected member {m.name!r} ({kind}, not in the manifest); "
                                     "refusing the archive")
                limit = MAX_TUNING_BYTES if m.name.startswith("tuning/") else MAX_MEMBER_BYTES
                if m.size > limit:
                    raise CacheError(f"{path}: {m.name} is {m.size} bytes (limit {limit}); refusing the archive")
                total += m.size
                if total > MAX_TOTAL_BYTES:
                    raise CacheError(f"{path}: more than {MAX_TOTAL_BYTES} bytes in all; refusing the archive")
                src = tar.extractfile(m)
                digest = _copy_hashed(src, staging.file(m.name) if m.name in wanted else None)
                if digest != expected[m.name]:
                    raise CacheError(f"{path}: {m.name} fails its checksum (archive damaged); nothing imported")
                seen.add(m.name)
    except CacheError:
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CacheError(f"{path} is truncated or damaged ({type(e).__name__}: {e}); nothing imported") from None
    return seen


def _copy_hashed(src, dest: Path | None) -> str:
    """sha256 of ``src``, copied in chunks to ``dest`` (never the whole member in memory)."""
    h = hashlib.sha256()
    out = None
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = open(dest, "xb")
    try:
        while src is not None and (chunk := src.read(1 << 20)):
            h.update(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return h.hexdigest()


def _validate_tuning(path, staged: Path, manifest: Mapping[str, Any]) -> None:
    """Parse the archive's tuning file as data, keep the entries that validate, merge them into
    this machine's DB file and stage the result (written by us, with our checksum)."""
    key = C.environment_key()
    if staged.name != f"{C.key_id(key)}.json":
        raise CacheError(f"{path}: tuning file {staged.name} is not for this environment "
                         f"({C.key_id(key)}.json); refusing the archive")
    imported = C._decode(staged, key)  # checksum, key, depth and shape; {} with a warning if bad
    if not imported and staged.stat().st_size:
        raise CacheError(f"{path}: its tuning file is damaged or not ours (see the warning); nothing imported")
    merged = C._decode(C.tuning_dir() / staged.name, key)
    for kernel, table in imported.items():
        merged.setdefault(kernel, {}).update(table)
    staged.unlink()
    C._atomic_write(staged, C._encode(key, merged))


class _Staging:
    """A staging folder next to each destination; ``commit`` moves everything in place or nothing."""

    def __init__(self, dests: Mapping[str, Path]) -> None:
        self.dests = dict(dests)
        self.dirs: dict[str, Path] = {}

    def __enter__(self) -> _Staging:
        return self

    def __exit__(self, *exc) -> None:
        for d in self.dirs.values():
            shutil.rmtree(d, ignore_errors=True)

    def file(self, name: str) -> Path:
        top, rest = name.split("/", 1)
        if top not in self.dirs:
            parent = self.dests[top].parent
            parent.mkdir(parents=True, exist_ok=True)
            self.dirs[top] = Path(tempfile.mkdtemp(prefix=f".import-{top}-", dir=parent))
        return self.dirs[top] / "new" / PurePosixPath(rest)

    def _plan(self) -> list[tuple[Path, Path]]:
        moves = []
        for top, d in self.dirs.items():
            dest = self.dests[top]
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                raise CacheError(f"{dest} exists and is not a folder; run `tri-inductor cache clear` first; "
                                 "nothing imported")
            new = d / "new"
            if not new.exists():
                continue
            if not dest.exists():
                moves.append((new, dest))  # one rename for the whole folder
                continue
            for dirpath, _, filenames in os.walk(new):
                for fn in filenames:
                    src = Path(dirpath) / fn
                    target = dest / src.relative_to(new)
                    for parent in [*reversed(target.relative_to(dest).parents)][1:]:
                        if (dest / parent).exists() and not (dest / parent).is_dir():
                            raise CacheError(f"{dest / parent} is a file where the archive needs a folder; "
                                             "nothing imported")
                    if target.is_dir() and not target.is_symlink():
                        raise CacheError(f"{target} is a folder where the archive has a file; nothing imported")
                    moves.append((src, target))
        return moves

    def commit(self) -> None:
        moves = self._plan()
        done: list[tuple[Path, Path, Path | None]] = []
        try:
            for src, target in moves:
                backup = None
                if target.exists() or target.is_symlink():
                    top_dir = next(d for d in self.dirs.values() if d in src.parents)
                    backup = top_dir / "old" / f"{len(done)}"
                    backup.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(target, backup)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, target)
                done.append((src, target, backup))
        except OSError as e:
            for src, target, backup in reversed(done):  # put everything back as it was
                with contextlib.suppress(OSError):
                    os.replace(target, src)
                    if backup is not None:
                        os.replace(backup, target)
            raise CacheError(f"moving the imported files into place failed ({e}); nothing imported") from None
