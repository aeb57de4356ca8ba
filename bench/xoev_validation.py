"""XÖV validation benchmark: the gateway's validator vs plain lxml, measured in the same run.

    python bench/xoev_validation.py [--shared ../shared] [--repeat 30]

Prints (1) registry start-up with every bundle of shared/xoev/catalog.json: cold (compile + write
cache) vs warm (verify cache + unpickle + libxml2 compile), in-process and in a fresh interpreter,
(2) per-sample validation time of ``validate_xml`` (hardened parse + libxml2 fast path, xmlschema
for invalid documents) against plain lxml (``etree.fromstring`` + a precompiled ``XMLSchema``)
and plain xmlschema, with ratios, (3) thread scaling of the three engines (why the async validator
uses processes), (4) throughput of the async ``XoevValidator`` with 2 worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import elementpath  # noqa: E402
import xmlschema  # noqa: E402
from lxml import etree  # noqa: E402

from gateway.xoev.config import XoevConfig, parse_xoev_config  # noqa: E402
from gateway.xoev.decode import validate_xml  # noqa: E402
from gateway.xoev.parsing import parse_xml  # noqa: E402
from gateway.xoev.registry import SchemaRegistry  # noqa: E402
from gateway.xoev.validator import XoevValidator  # noqa: E402


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (caches, lazy schema materialisation)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def config_for(shared: Path, cache_dir: Path) -> XoevConfig:
    catalog = json.loads((shared / "xoev" / "catalog.json").read_text("utf-8"))
    bundles: dict[str, dict[str, Any]] = {}
    for item in catalog:
        name = item["set"]
        bundle = bundles.setdefault(name, {"name": name, "dir": str(shared / "xoev" / name), "entries": []})
        bundle["entries"].append(item["entry_xsd"][len(name) + 1 :])
    raw = {"cache_dir": str(cache_dir), "workers": 2, "bundles": list(bundles.values())}
    return parse_xoev_config(raw, base_dir=cache_dir, file="bench")


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, "
        f"lxml {'.'.join(map(str, etree.LXML_VERSION))} / libxml2 {'.'.join(map(str, etree.LIBXML_VERSION))}, "
        f"xmlschema {xmlschema.__version__}, elementpath {elementpath.__version__}"
    )


def startup(config: XoevConfig, repeat: int) -> None:
    print("## Registry start-up, all catalog bundles\n")
    assert config.cache_dir is not None
    started = time.perf_counter()
    cold = SchemaRegistry.open(config)
    cold_open = time.perf_counter() - started
    cold.warm()
    cold_total = time.perf_counter() - started
    entries = sum(len(b.entries) for b in cold.bundles.values())
    size = sum(p.stat().st_size for p in config.cache_dir.glob("*.pickle"))
    print(f"{len(cold.bundles)} bundles, {entries} entry schemas, cache {size / 1e6:.1f} MB of pickles\n")

    keep: list[SchemaRegistry] = []  # freeing the previous registry must not count as start-up time

    def warm_open() -> None:
        keep.append(SchemaRegistry.open(config))

    def warm_full() -> None:
        registry = SchemaRegistry.open(config)
        registry.warm()
        keep.append(registry)

    del cold
    opened = median_seconds(warm_open, repeat)
    keep.clear()
    full = median_seconds(warm_full, max(3, repeat // 5))
    keep.clear()
    script = (
        "import sys,time; t0=time.perf_counter(); sys.path.insert(0, sys.argv[1]);"
        "from gateway.xoev.registry import SchemaRegistry; from gateway.xoev.config import parse_xoev_config;"
        "import json,pathlib; t1=time.perf_counter();"
        "raw=json.loads(pathlib.Path(sys.argv[2]).read_text());"
        "c=parse_xoev_config(raw, base_dir=pathlib.Path('.'), file='bench');"
        "r=SchemaRegistry.open(c); r.warm(); t2=time.perf_counter();"
        "print(f'{t1-t0:.3f} {t2-t1:.3f}')"
    )
    raw = {
        "cache_dir": str(config.cache_dir),
        "bundles": [{"name": b.name, "dir": str(b.dir), "entries": list(b.entries)} for b in config.bundles],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(raw, fh)
    fresh = [
        subprocess.run([sys.executable, "-c", script, str(REPO), fh.name], capture_output=True, text=True, check=True)
        .stdout.splitlines()[-1]
        .split()  # the last line: log lines may precede it
        for _ in range(3)
    ]
    os.unlink(fh.name)
    imports = statistics.median(float(f[0]) for f in fresh)
    fresh_warm = statistics.median(float(f[1]) for f in fresh)
    print("| start | seconds | vs cold |")
    print("|---|---|---|")
    print(f"| cold: compile every bundle, write cache, materialise | {cold_total:.3f} | 1.00 |")
    print(f"| cold: compile + write cache only (`open`) | {cold_open:.3f} | {cold_open / cold_total:.2f} |")
    print(f"| warm `open` (verify cache: hash every closure file) | {opened:.3f} | {opened / cold_total:.3f} |")
    print(f"| warm `open` + `warm()` (unpickle all, compile libxml2) | {full:.3f} | {full / cold_total:.3f} |")
    print(f"| fresh interpreter: warm `open` + `warm()` | {fresh_warm:.3f} | {fresh_warm / cold_total:.3f} |")
    print(f"| fresh interpreter: importing lxml/xmlschema/gateway.xoev first | {imports:.3f} | - |")
    print()


def per_sample(config: XoevConfig, shared: Path, repeat: int) -> None:
    print("## Per-sample validation (median of", repeat, "runs, milliseconds)\n")
    registry = SchemaRegistry.open(config)
    registry.warm()
    catalog = json.loads((shared / "xoev" / "catalog.json").read_text("utf-8"))
    print("| sample | KiB | valid | ours | plain lxml | ours / lxml | plain xmlschema | xmlschema / ours |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for item in catalog:
        for result in item["sample_results"]:
            data = (shared / "xoev" / result["path"]).read_bytes()
            tree = parse_xml(data)
            root = etree.QName(tree.getroot())
            entry = registry.lookup(root.namespace or "", root.localname)
            assert entry is not None
            fast = registry.lxml_schema(entry.bundle, entry.namespace)
            schema = registry.xmlschema(entry.bundle)

            def ours(data: bytes = data) -> None:
                validate_xml(data, registry=registry)

            ours_s = median_seconds(ours, repeat)
            if fast is not None:

                def plain(data: bytes = data, fast: etree.XMLSchema = fast) -> None:
                    fast.validate(etree.fromstring(data))

                lxml_s: float | None = median_seconds(plain, repeat)
            else:
                lxml_s = None

            def plain_xmlschema(data: bytes = data, schema: Any = schema) -> None:
                schema.is_valid(xmlschema.XMLResource(data, allow="none", defuse="always"))

            xs_s = median_seconds(plain_xmlschema, max(3, repeat // 5))
            name = result["path"].split("/")[-1]
            lxml_cell = f"{lxml_s * 1e3:.2f}" if lxml_s else "n/a (libxml2 cannot load)"
            ratio_cell = f"{ours_s / lxml_s:.2f}" if lxml_s else "-"
            if lxml_s and result["valid"]:
                ratios.append(ours_s / lxml_s)
            print(
                f"| {name} | {len(data) / 1024:.0f} | {result['valid']} | {ours_s * 1e3:.2f} | {lxml_cell} "
                f"| {ratio_cell} | {xs_s * 1e3:.2f} | {xs_s / ours_s:.1f} |"
            )
    print(
        f"\nvalid samples: ours / plain lxml, median ratio {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})\n"
    )


def threads(config: XoevConfig, shared: Path) -> None:
    print("## Thread scaling on 2 threads (why validation runs in processes)\n")
    registry = SchemaRegistry.open(config)
    path = shared / "xoev/xdatenfelder/samples/2.0/gewerbeanmeldung/S00000009_xdatenfelder.xml"
    data = path.read_bytes()
    fast = registry.lxml_schema("xdatenfelder", "urn:xoev-de:fim:standard:xdatenfelder_2")
    assert fast is not None
    schema = registry.xmlschema("xdatenfelder")
    trees = [etree.fromstring(data) for _ in range(64)]
    jobs: dict[str, tuple[Callable[[int], object], int]] = {
        "libxml2 validate (tree given)": (lambda i: fast.validate(trees[i % 64]), 128),
        "hardened parse (pull events + limits)": (lambda i: parse_xml(data), 64),
        "xmlschema validate": (lambda i: schema.is_valid(trees[i % 64]), 6),
    }
    print("| engine | 1 thread ms/doc | 2 threads ms/doc | speed-up |")
    print("|---|---|---|---|")
    for label, (job, n) in jobs.items():
        job(0)
        started = time.perf_counter()
        for i in range(n):
            job(i)
        one = (time.perf_counter() - started) / n
        with ThreadPoolExecutor(2) as pool:
            started = time.perf_counter()
            list(pool.map(job, range(n)))
            two = (time.perf_counter() - started) / n
        print(f"| {label} | {one * 1e3:.2f} | {two * 1e3:.2f} | {one / two:.2f} |")
    print()


async def pool_throughput(config: XoevConfig, shared: Path) -> None:
    print("## Async XoevValidator, 2 worker processes\n")
    catalog = json.loads((shared / "xoev" / "catalog.json").read_text("utf-8"))
    docs = [(shared / "xoev" / r["path"]).read_bytes() for i in catalog for r in i["sample_results"] if r["valid"]]
    registry = SchemaRegistry.open(config)
    started = time.perf_counter()
    for data in docs * 5:
        validate_xml(data, registry=registry)
    inline = (time.perf_counter() - started) / (len(docs) * 5)
    started = time.perf_counter()
    async with XoevValidator(config, workers=2) as validator:
        ready = time.perf_counter() - started
        await asyncio.gather(*(validator.validate_xml(d) for d in docs))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(validator.validate_xml(d) for d in docs * 5))
        pooled = (time.perf_counter() - started) / (len(docs) * 5)
    print(f"start (spawn 2 workers, each opens the warm cache and materialises): {ready:.2f} s\n")
    print("| mode | ms/doc (mixed valid samples) | docs/s | vs in-process |")
    print("|---|---|---|---|")
    print(f"| in-process, one thread (blocks the event loop) | {inline * 1e3:.2f} | {1 / inline:.0f} | 1.00 |")
    print(f"| XoevValidator, 2 processes, concurrent | {pooled * 1e3:.2f} | {1 / pooled:.0f} | {inline / pooled:.2f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_shared = Path(os.environ.get("GATEWAY_SHARED_DIR", REPO.parent / "shared"))
    parser.add_argument("--shared", type=Path, default=default_shared)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    if not (args.shared / "xoev" / "catalog.json").is_file():
        sys.exit(f"{args.shared}/xoev/catalog.json not found (use --shared)")
    print(f"# XÖV validation benchmark\n\nmachine: {machine()}\n")
    with tempfile.TemporaryDirectory(prefix="xoev-bench-") as tmp:
        config = config_for(args.shared.resolve(), Path(tmp))
        startup(config, args.repeat)
        per_sample(config, args.shared, args.repeat)
        threads(config, args.shared)
        asyncio.run(pool_throughput(config, args.shared))


if __name__ == "__main__":
    main()
