"""``tri-inductor cache info | clear | export FILE | import FILE`` (see :mod:`tri_inductor.cache`)."""
from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _print_info(data: dict) -> None:
    from .cache import describe_key

    print(f"cache folder:   {data['root']}")
    print(f"this machine:   {describe_key(data['key'])}")
    print(f"environment id: {data['key_id']}")
    if not data["tuning"]:
        print("tuning results: none")
    for t in data["tuning"]:
        if t.get("damaged"):
            print(f"tuning results: {t['file']}  DAMAGED (ignored; rewritten at the next tuning)")
            continue
        n = ", ".join(f"{k} {v}" for k, v in sorted((t.get("entries") or {}).items())) or "empty"
        which = "this machine" if t["current"] else "other card/version (unused here)"
        print(f"tuning results: {t['file']}  [{which}]  {n}")
    for name, d in data["dirs"].items():
        use = "in use" if d.get("in_use") else f"not in use here: {name} uses its own folder, below"
        print(f"{name + ' cache:':16}{d['path']}  {d['files']} files, {_human(d['bytes'])} ({use})")
    for var, value in data["env"].items():
        print(f"  {var}={value if value is not None else '(unset)'}")
    v = data["vllm"]
    print(f"vLLM compile cache: {v['path']}  {v['files']} files, {_human(v['bytes'])}")


def cache_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tri-inductor cache",
        description="Manage tri_inductor's compile and tuning cache (folder: TRI_INDUCTOR_CACHE_DIR, "
                    "default ~/.cache/tri_inductor).",
        epilog="exit status: 0 ok, 2 bad input or refused import")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("info", help="what is cached, where, for which card and versions")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("clear", help="delete our tuning results and the Inductor/Triton caches we own")
    s.add_argument("--vllm", action="store_true", help="also delete vLLM's torch_compile_cache")
    s = sub.add_parser("export", help="write the cache of this machine to FILE (.tar.gz)")
    s.add_argument("file")
    s.add_argument("--no-vllm", action="store_true", help="leave vLLM's torch_compile_cache out")
    s.add_argument("--key-file", help="sign the manifest (HMAC-SHA256) with the key in this file, so that "
                   "`import --trust` with the same key accepts its compiled artifacts "
                   "(default: $TRI_INDUCTOR_CACHE_KEY_FILE; unsigned without one)")
    s = sub.add_parser("import", help="load a cache exported on a machine with the same card and versions "
                       "(default: the tuning results only; compiled artifacts need --trust and the key)")
    s.add_argument("file")
    s.add_argument("--trust", action="store_true",
                   help="also import the compiled artifacts (pickles, generated code, cubins: they run when "
                        "loaded); only if the archive's signature verifies with --key-file")
    s.add_argument("--key-file", help="the key the archive was signed with (default: $TRI_INDUCTOR_CACHE_KEY_FILE)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad input, 0 on --help
        return EXIT_OK if e.code == 0 else EXIT_BAD_INPUT

    from . import cache, cache_archive

    try:
        if args.cmd == "info":
            data = cache.info()
            print(json.dumps(data, indent=1) if args.json else "", end="\n" if args.json else "")
            if not args.json:
                _print_info(data)
        elif args.cmd == "clear":
            removed = cache.clear(include_vllm=args.vllm)
            print("removed:\n  " + "\n  ".join(removed) if removed else
                  f"nothing to remove (no tuning/inductor/triton under {cache.cache_root()})")
        elif args.cmd == "export":
            m = cache_archive.export(args.file, include_vllm=not args.no_vllm, key_file=args.key_file)
            signed = "signed" if "hmac_sha256" in m else "unsigned: another machine imports its tuning results only"
            print(f"wrote {args.file}: {len(m['files'])} files for {cache.describe_key(m['key'])} ({signed})")
        elif args.cmd == "import":
            m = cache_archive.import_(args.file, trust=args.trust, key_file=args.key_file)
            print(f"imported {len(m['imported'])} file(s) from {args.file} (made {m.get('created')}) "
                  f"into {cache.cache_root()}")
            if m["skipped"]:
                print(f"skipped {len(m['skipped'])} compiled artifact(s) (they run code when loaded; the next "
                      "compile rebuilds them). To import them: export with --key-file KEY, import with "
                      "--trust --key-file KEY")
    except cache.CacheError as e:
        print(f"tri-inductor cache: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"tri-inductor cache: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(cache_main())
