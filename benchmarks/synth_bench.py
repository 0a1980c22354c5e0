"""``maskkit synth`` against MaskTheFace, side by side: whole process, one core, same distinct inputs.

Every figure is measured in this run; nothing is remembered from an earlier one. For each case
both tools process the same files (distinct files: no copy of one file, so a content cache
cannot help), pinned to one core (``sched_setaffinity``, ``OMP_NUM_THREADS=1``), whole process
(start-up, model loading, reading and writing included), at two input counts: 1 and N. Runs
alternate between the tools (the order flips every round) and each figure is the median over
``--repeat`` rounds. Per case it prints:

* start-up: the time of the run over 1 input;
* per-image rate: ``(N - 1) / (t(N) - t(1))`` images/s, start-up apart, and the ratio
  maskkit / MaskTheFace, in wall-clock seconds and in CPU seconds (user + sys of the process
  and its children, from ``wait4``; on a shared machine the CPU figure is the steadier one:
  it is what the pinned core would do if nothing else ran on it);
* peak memory (largest resident set, ``ru_maxrss``) of the run over N inputs;
* what each tool made of the N inputs (maskkit: samples and failures, every input accounted;
  MaskTheFace: the files it wrote -- it drops the images it finds no face in without a word);
* maskkit's stage split over the N inputs (its workers' own timers, ``manifest.json``).

Cases (real faces from ``../shared/data``):

* ``aligned``: ArcFace-aligned 112x112 crops of ``celeb-aligned`` (round-robin over the
  identities), maskkit with ``--aligned`` (every crop checked: size, a face, on the template);
* ``loose``: 150x150 loose crops: each ``lfw-johns`` face placed at a random scale (0.85-1.15),
  angle (+-20 degrees) and shift (+-12 px), seeded, 13 placements of each of the 55 faces;
* ``photos``: full photographs: the 7 single-face portraits of ``photos/`` (obama*, biden,
  einstein, breakingbad, Tom_Cruise), each reframed 6 ways (a random crop holding the face,
  scaled to a long side of 700-1400 px, seeded).

maskkit runs ``synth --ratio 1 -j 1`` (every face masked, as MaskTheFace does, all five styles
balanced) with the detector it would use by default here; MaskTheFace runs
``mask_the_face.py --mask_type surgical`` on a scratch copy of the inputs (it writes ``DIR_masked``
beside ``DIR``). MaskTheFace is looked for in ``$MASKKIT_MTF`` (a ``mask_the_face.py`` or its
folder), else the copy ``../shared/anchors/setup-mtf.sh`` makes (its README says how), with the
python in ``$MASKKIT_MTF_PYTHON`` or the one that script sets up; when it is not there the
benchmark says so in one line and measures maskkit alone.

Usage::

    nice python benchmarks/synth_bench.py [--data ../shared/data] [--cases aligned,loose,photos]
        [--n-aligned 400] [--n-loose 300] [--n-photos 42] [--repeat 3] [--core 0]
        [--maskkit-args "--detector hog"] [--baseline OLD_CHECKOUT] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = ("obama", "obama2", "obama3", "biden", "einstein", "breakingbad", "Tom_Cruise_avp_2014_4")
VGGFACE2_IMAGES = 3_310_000


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------

def aligned_inputs(data: Path, dst: Path, n: int) -> Path:
    """``n`` celeb-aligned crops, round-robin over identities (copies of distinct files)."""
    src = data / "celeb-aligned"
    ids = sorted(p for p in src.iterdir() if p.is_dir())
    lists = {d: sorted(d.glob("*.jpg")) for d in ids}
    picked, i = 0, 0
    while picked < n:
        before = picked
        for d in ids:
            if i < len(lists[d]) and picked < n:
                (dst / d.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(lists[d][i], dst / d.name / lists[d][i].name)
                picked += 1
        if picked == before:
            raise SystemExit(f"celeb-aligned has only {picked} crops (asked for {n})")
        i += 1
    return dst


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def loose_inputs(data: Path, dst: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct 150x150 loose crops: lfw-johns faces at a random scale, angle and shift."""
    import cv2

    from maskkit.io.image_io import load_image

    files = sorted((data / "lfw-johns").rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    for k in range(n):
        p = files[k % len(files)]
        rgb = load_image(p)
        h, w = rgb.shape[:2]
        s, a = rng.uniform(0.85, 1.15), rng.uniform(-20, 20)
        dx, dy = rng.uniform(-12, 12, 2)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), a, s)
        m[:, 2] += (75 - w / 2 + dx, 75 - h / 2 + dy)
        out = cv2.warpAffine(rgb, m, (150, 150), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        _write_jpeg(dst / p.parent.name / f"{p.stem}_{k // len(files):02d}.jpg", out)
    return dst


def photo_inputs(data: Path, dst: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct full photos: the single-face portraits reframed (a random crop holding
    the face, long side 700-1400 px)."""
    import cv2

    from maskkit.face.detect import make_detector
    from maskkit.io.image_io import load_image

    hog = make_detector("hog")
    rng = np.random.default_rng(seed)
    srcs = []
    for name in PORTRAITS:
        p = data / "photos" / f"{name}.jpg"
        if p.is_file():
            rgb = load_image(p)
            boxes = hog.detect_boxes(rgb)
            box = max(boxes, key=lambda b: b[0][2] - b[0][0])[0] if boxes else (0, 0, rgb.shape[1], rgb.shape[0])
            srcs.append((name, rgb, box))
    if not srcs:
        raise SystemExit("photos/ has none of the single-face portraits")
    for k in range(n):
        name, rgb, (x0, y0, x1, y1) = srcs[k % len(srcs)]
        h, w = rgb.shape[:2]
        # a crop 60-100 % of the frame that holds the face box
        fw, fh = rng.uniform(0.6, 1.0) * w, rng.uniform(0.6, 1.0) * h
        fw, fh = max(fw, (x1 - x0) * 1.6), max(fh, (y1 - y0) * 1.6)
        cx0 = rng.uniform(max(0, x1 - fw), max(0, min(x0, w - fw)) + 1e-6)
        cy0 = rng.uniform(max(0, y1 - fh), max(0, min(y0, h - fh)) + 1e-6)
        crop = rgb[int(cy0):int(min(h, cy0 + fh)), int(cx0):int(min(w, cx0 + fw))]
        side = rng.uniform(700, 1400)
        s = side / max(crop.shape[:2])
        out = cv2.resize(crop, (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        _write_jpeg(dst / name / f"{name}_{k // len(srcs):02d}.jpg", out)
    return dst


def first_only(src: Path, dst: Path) -> Path:
    """A tree with the first file of ``src`` only (the 1-input run)."""
    f = sorted(p for p in src.rglob("*") if p.is_file())[0]
    (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(f, dst / f.parent.name / f.name)
    return dst


# ---------------------------------------------------------------------------------------------
# running one whole process
# ---------------------------------------------------------------------------------------------

def run_pinned(cmd: list[str], cwd: Path | None, core: int, extra_env: dict | None = None) -> dict:
    """Run ``cmd`` pinned to ``core``; wall seconds, CPU seconds (user+sys, children included)
    and peak resident memory (MiB) from ``wait4``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0", COLUMNS="400", **(extra_env or {}))

    def pin():
        os.sched_setaffinity(0, {core})

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=pin)
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mib": ru.ru_maxrss / 1024, "output": text}


def find_mtf() -> tuple[list[str], Path] | None:
    """(python + script, its folder) of MaskTheFace, or ``None``."""
    env = os.environ.get("MASKKIT_MTF")
    cands = [Path(env)] if env else []
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maskkit-anchors"
    cands.append(cache / "MaskTheFace")
    for c in cands:
        script = c if c.suffix == ".py" else c / "mask_the_face.py"
        if not script.is_file() or not (script.parent / "dlib_models" / "shape_predictor_68_face_landmarks.dat").exists():
            continue
        py = os.environ.get("MASKKIT_MTF_PYTHON") or str(cache / "mtf-venv" / "bin" / "python")
        if Path(py).is_file():
            return [py, str(script)], script.parent
    return None


class Tool:
    def __init__(self, name: str):
        self.name = name

    def run(self, src: Path, scratch: Path, core: int) -> dict:
        raise NotImplementedError


class Maskkit(Tool):
    def __init__(self, aligned: bool, extra: list[str], checkout: Path | None = None):
        super().__init__("maskkit" if checkout is None else f"maskkit@{checkout.name}")
        self.aligned, self.extra = aligned, extra
        # another checkout's maskkit package: run from its folder (``-m`` puts the working folder first)
        self.cwd = checkout

    def run(self, src, scratch, core):
        out = scratch / "out"
        cmd = [sys.executable, "-m", "maskkit.cli", "synth", "--src", str(src), "--out", str(out), "--ratio", "1",
               "-j", "1", "--overwrite", *(["--aligned"] if self.aligned else []), *self.extra]
        r = run_pinned(cmd, self.cwd, core)
        man = json.loads((out / "manifest.json").read_text())
        r.update(made=f"{man['num_samples']} samples, {man['inputs']['failed']} failed "
                      f"({', '.join(f'{k} {v}' for k, v in sorted(man['inputs']['failed_by_reason'].items())) or '-'})",
                 stages=_stages(r.pop("output")))
        shutil.rmtree(out, ignore_errors=True)
        return r


def _stages(output: str) -> dict:
    """The worker stage seconds of synth's summary table (its ``stages (worker s)`` row)."""
    import re

    for line in output.splitlines():
        if "stages (worker s)" in line:
            return {k: float(v) for k, v in re.findall(r"([a-z]+) ([0-9.]+) \(\d+%\)", line)}
    return {}


class MaskTheFace(Tool):
    def __init__(self, cmd: list[str], where: Path):
        super().__init__("MaskTheFace")
        self.cmd, self.where = cmd, where

    def run(self, src, scratch, core):
        work = scratch / "mtf" / "in"
        shutil.rmtree(scratch / "mtf", ignore_errors=True)
        shutil.copytree(src, work)
        r = run_pinned(self.cmd + ["--path", str(work), "--mask_type", "surgical"], self.where, core)
        made = sum(1 for p in (scratch / "mtf" / "in_masked").rglob("*") if p.is_file())
        r.pop("output")
        r.update(made=f"{made} masked images written, no record of the rest", stages={})
        shutil.rmtree(scratch / "mtf", ignore_errors=True)
        return r


# ---------------------------------------------------------------------------------------------

def bench_case(name: str, full: Path, one: Path, n: int, tools: list[Tool], repeat: int, core: int,
               scratch: Path) -> dict:
    runs: dict[str, dict[int, list[dict]]] = {t.name: {1: [], n: []} for t in tools}
    for r in range(repeat):
        order = tools if r % 2 == 0 else tools[::-1]
        for count, src in ((1, one), (n, full)):
            for t in order:
                runs[t.name][count].append(t.run(src, scratch, core))
                print(f"  [{name}] round {r + 1}/{repeat} {t.name:<12} N={count:<5} "
                      f"wall {runs[t.name][count][-1]['wall']:7.2f} s  cpu {runs[t.name][count][-1]['cpu']:7.2f} s",
                      file=sys.stderr, flush=True)
    res = {}
    for t in tools:
        med = {c: {k: statistics.median(x[k] for x in runs[t.name][c]) for k in ("wall", "cpu", "rss_mib")}
               for c in (1, n)}
        per = {k: (n - 1) / max(1e-9, med[n][k] - med[1][k]) for k in ("wall", "cpu")}
        stages = runs[t.name][n][-1]["stages"]
        res[t.name] = {"n": n, "startup_wall": med[1]["wall"], "startup_cpu": med[1]["cpu"],
                       "t_n_wall": med[n]["wall"], "t_n_cpu": med[n]["cpu"], "rate_wall": per["wall"],
                       "rate_cpu": per["cpu"], "rss_mib": med[n]["rss_mib"], "made": runs[t.name][n][-1]["made"],
                       "stages": stages}
    return res


def print_case(name: str, res: dict) -> None:
    mtf = res.get("MaskTheFace")
    mks = [(k, v) for k, v in res.items() if k.startswith("maskkit")]
    print(f"\n{name}: N = {mks[0][1]['n']} distinct inputs (median of alternating runs, one core)")
    print(f"  {'tool':<22}{'img/s wall':>11}{'img/s cpu':>11}{'start-up s':>12}{'start cpu s':>12}{'peak MiB':>10}  made of N")
    for nm, t in ([("MaskTheFace", mtf)] if mtf else []) + mks:
        print(f"  {nm:<22}{t['rate_wall']:>11.1f}{t['rate_cpu']:>11.1f}{t['startup_wall']:>12.2f}"
              f"{t['startup_cpu']:>12.2f}{t['rss_mib']:>10.0f}  {t['made']}")
    for nm, mk in mks:
        if mtf is not None:
            print(f"  ratio {nm}/MaskTheFace: per-image {mk['rate_wall'] / mtf['rate_wall']:.1f}x wall, "
                  f"{mk['rate_cpu'] / mtf['rate_cpu']:.1f}x cpu; start-up {mk['startup_wall'] / mtf['startup_wall']:.2f}x "
                  f"MaskTheFace's (wall), {mk['startup_cpu'] / mtf['startup_cpu']:.2f}x (cpu)")
        st = mk.get("stages") or {}
        tot = sum(st.values()) or 1.0
        if st:
            print(f"  {nm} stage split: " + ", ".join(f"{k} {100 * v / tot:.0f}%"
                                                    for k, v in sorted(st.items(), key=lambda kv: -kv[1])))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cases", default="aligned,loose,photos")
    ap.add_argument("--n-aligned", type=int, default=400)
    ap.add_argument("--n-loose", type=int, default=300)
    ap.add_argument("--n-photos", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds; medians are reported")
    ap.add_argument("--core", type=int, default=0, help="the core both tools are pinned to")
    ap.add_argument("--maskkit-args", default="", help="extra options for maskkit synth (e.g. '--detector hog')")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="also run the maskkit package of this checkout (a folder holding maskkit/), e.g. an older commit")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if not (args.data / "celeb-aligned").exists():
        sys.exit(f"{args.data} has no celeb-aligned/ (pass --data)")
    found = find_mtf()
    if found is None:
        print("MaskTheFace not found (set MASKKIT_MTF, or run ../shared/anchors/setup-mtf.sh): measuring maskkit alone")
    extra = shlex.split(args.maskkit_args)
    results = {}
    with tempfile.TemporaryDirectory(prefix="synth_bench_") as tmp:
        tmp = Path(tmp)
        makers = {"aligned": (aligned_inputs, args.n_aligned, True), "loose": (loose_inputs, args.n_loose, False),
                  "photos": (photo_inputs, args.n_photos, False)}
        for case in [c for c in args.cases.split(",") if c]:
            make, n, aligned = makers[case]
            full = make(args.data, tmp / case / "full", n)
            one = first_only(full, tmp / case / "one")
            tools: list[Tool] = [Maskkit(aligned, extra)]
            if args.baseline is not None:
                tools.append(Maskkit(aligned, extra, args.baseline.resolve()))
            if found is not None:
                tools.insert(0, MaskTheFace(*found))
            results[case] = bench_case(case, full, one, n, tools, args.repeat, args.core, tmp / case / "scratch")
    print(f"\nmaskkit synth --ratio 1 -j 1 {args.maskkit_args} vs MaskTheFace --mask_type surgical; "
          f"both pinned to core {args.core}; {args.repeat} alternating rounds; machine load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared: wall figures are noisy, cpu ones steadier)")
    for case, res in results.items():
        print_case(case, res)
    if "aligned" in results:
        r = results["aligned"]["maskkit"]["rate_cpu"]
        print(f"\nVGGFace2-sized set ({VGGFACE2_IMAGES / 1e6:.2f}M aligned crops) at the aligned cpu rate "
              f"{r:.0f} img/s/core: {VGGFACE2_IMAGES / r / 3600:,.1f} core-hours")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
