#!/usr/bin/env bash
# Smoke test of the Linux package in a clean Debian: install it as a user would, install a
# model from an archive, index a folder, search it, start the window and quit it, uninstall.
#
#   sudo installers/linux/smoke_test.sh build/imagesearch_0.1.0_amd64.deb
#
# Needs root (debootstrap, chroot, mounts) and Debian's mirror. The minimal Debian
# (debootstrap --variant=minbase, no Python) is made once into build/smoke/ and unpacked
# afresh for each run; apt installs the package there, with the dependencies it declares
# and nothing else. The test photos and a tiny open_clip model with random weights are
# made outside it, with the development environment's Python ($PYTHON, default .venv from
# `make install`), and the model goes in as an archive written by `imagesearch models pack`.
# Not part of `make test`: it takes minutes and a network.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEB=$(realpath "${1:?usage: smoke_test.sh PACKAGE.deb}")
PY=${PYTHON:-$ROOT/.venv/bin/python}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-$ROOT/build/smoke}
BASE="$WORK/base-$SUITE.tar"
CR="$WORK/root"
HOME_IN=/home/tester
UHOME="$CR$HOME_IN"
TINY=ISTiny-ViT/random

step() { printf '\n== %s\n' "$*"; }
fail() { echo "SMOKE TEST FAILED: $*" >&2; exit 1; }
cleanup() {
    for m in dev/shm proc; do
        if mountpoint -q "$CR/$m"; then umount "$CR/$m"; fi
    done
    if grep -qF " $CR/" /proc/mounts; then
        echo "still mounted under $CR; not removing it" >&2
        return 1
    fi
    rm -rf --one-file-system "$CR"
}
# The processes started from the package, by pid: /proc/PID/cmdline starts with its path.
app_processes() {
    local f cmd
    for f in /proc/[0-9]*/cmdline; do
        cmd=$(tr '\0' ' ' 2>/dev/null < "$f") || continue  # it may have ended
        case "$cmd" in "/opt/imagesearch/"*"$1"*) echo "${f%/cmdline}" ;; esac
    done
}
trap cleanup EXIT
# As the test user, with nothing of this machine's environment.
as_user() {
    chroot --userspec=1000:1000 "$CR" env -i HOME=$HOME_IN PATH=/usr/bin:/bin \
        LANG=C.UTF-8 "$@"
}

step "a clean $SUITE"
mkdir -p "$WORK"
if [ ! -f "$BASE" ]; then
    rm -rf "$WORK/base"
    debootstrap --variant=minbase "$SUITE" "$WORK/base" "$MIRROR"
    tar -C "$WORK/base" -cf "$BASE" .
    rm -rf "$WORK/base"
fi
cleanup
mkdir -p "$CR"
tar -C "$CR" -xf "$BASE"
mount -t proc proc "$CR/proc"
mkdir -p "$CR/dev/shm"  # debootstrap made the device nodes; shm is for multiprocessing
mount -t tmpfs -o mode=1777 tmpfs "$CR/dev/shm"
cp /etc/resolv.conf "$CR/etc/resolv.conf"
chroot "$CR" python3 --version 2>/dev/null && fail "the clean system has a Python"
echo "tester:x:1000:1000::$HOME_IN:/bin/sh" >> "$CR/etc/passwd"
echo "tester:x:1000:" >> "$CR/etc/group"
mkdir -p "$UHOME"

step "install the package with apt (its declared dependencies only)"
cp "$DEB" "$CR/tmp/imagesearch.deb"
chroot "$CR" apt-get update -qq
chroot "$CR" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends /tmp/imagesearch.deb > "$WORK/apt.log" 2>&1 \
    || { tail -20 "$WORK/apt.log"; fail "apt could not install the package"; }
test -x "$CR/opt/imagesearch/imagesearch" || fail "nothing in /opt/imagesearch"
# The window reads its icon from the package's data, which the spec must have collected.
for size in 16 256; do
    test -f "$CR/opt/imagesearch/_internal/imagesearch/gui/icons/imagesearch-$size.png" \
        || fail "the window's icon is not in the bundle"
done
# Every library the bundle's Qt plugins and Python extensions load must be found: inside
# the bundle, or on the system through the package's dependencies.
chroot "$CR" sh -c 'cd /opt/imagesearch/_internal
    dirs=$(find . -name "*.so*" -type f -printf "/opt/imagesearch/_internal/%h\n" | sort -u | tr "\n" :)
    find . -name "*.so*" -type f | LD_LIBRARY_PATH=$dirs xargs ldd 2>/dev/null \
        | grep "not found" | sort -u' > "$WORK/missing-libraries.txt" || true
if [ -s "$WORK/missing-libraries.txt" ]; then
    cat "$WORK/missing-libraries.txt"
    fail "libraries the bundle needs are neither in it nor in the package's dependencies"
fi
echo "all libraries found; installed size: $(du -sm "$CR/opt/imagesearch" | cut -f1) MB"

step "test photos, and a tiny random model packed on 'another computer'"
mkdir -p "$UHOME/smoke/photos/trip" "$UHOME/out"
(cd "$ROOT" && "$PY" - "$UHOME/smoke" "$TINY" <<'PYTHON'
import os, sys, tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from imagesearch.cli.main import main
from tests.tiny_model import write_tiny_checkpoint

out, model = Path(sys.argv[1]), sys.argv[2]
colours = ["red", "green", "blue", "orange", "purple", "yellow"]
for i, colour in enumerate(colours * 2):
    img = Image.new("RGB", (320 + 16 * i, 240), "white")
    draw = ImageDraw.Draw(img)
    if i < 6:
        draw.ellipse((40, 30, 200, 190), fill=colour)
    else:
        draw.rectangle((60, 40, 260, 200), fill=colour)
    folder = out / "photos" / ("trip" if i % 3 == 0 else "")
    img.save(folder / f"{colour}-{'circle' if i < 6 else 'square'}.{'png' if i == 7 else 'jpg'}")
(out / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
with tempfile.TemporaryDirectory() as tmp:
    checkpoint, config = write_tiny_checkpoint(Path(tmp) / "ckpt")
    os.environ["IMAGESEARCH_MODELS"] = str(Path(tmp) / "models")
    os.environ["IMAGESEARCH_HOME"] = str(Path(tmp) / "library")
    assert main(["models", "install", str(checkpoint), "--model", model,
                 "--config", str(config)]) == 0
    assert main(["models", "pack", model, str(out / "tiny.tar")]) == 0
PYTHON
)
chown -R 1000:1000 "$UHOME"

step "the installed CLI"
as_user imagesearch --version
as_user imagesearch models install $HOME_IN/smoke/tiny.tar
as_user imagesearch models list | grep -Eq "$TINY +installed" || fail "model not listed"
mkdir -p "$UHOME/.local/share/imagesearch"
# Two decode processes: every photo is decoded in a process the frozen app spawned.
printf '{"model_id": "%s", "precision": "fp32", "decode_workers": 2}\n' "$TINY" \
    > "$UHOME/.local/share/imagesearch/settings.json"
chown -R 1000:1000 "$UHOME"
( while :; do app_processes --multiprocessing-fork; sleep 0.2; done ) > "$WORK/decoders.raw" &
SAMPLER=$!
as_user imagesearch index $HOME_IN/smoke/photos --no-progress | tee "$UHOME/out/index.txt"
kill $SAMPLER; wait $SAMPLER 2>/dev/null || true
sort -u "$WORK/decoders.raw" > "$WORK/decoders.txt"
grep -q "12 added" "$UHOME/out/index.txt" || fail "not every photo was indexed"
grep -q "1 failed" "$UHOME/out/index.txt" || fail "the broken file was not reported"
echo "decode processes seen while indexing: $(wc -l < "$WORK/decoders.txt")"
[ "$(wc -l < "$WORK/decoders.txt")" -ge 1 ] || fail "no decode process was seen"
as_user imagesearch search --image $HOME_IN/smoke/photos/trip/red-circle.jpg --json -k 3 \
    > "$UHOME/out/by-image.json"
as_user imagesearch search a red circle --json -k 5 > "$UHOME/out/by-text.json"
as_user imagesearch status --json > "$UHOME/out/status.json"
"$PY" - "$UHOME/out" $HOME_IN <<'PYTHON'
import json, sys
from pathlib import Path

out, home = Path(sys.argv[1]), sys.argv[2]
by_image = json.loads((out / "by-image.json").read_text())
assert by_image[0]["path"] == f"{home}/smoke/photos/trip/red-circle.jpg", by_image[0]
assert len(json.loads((out / "by-text.json").read_text())) == 5
status = json.loads((out / "status.json").read_text())
assert (status["indexed"], status["failed"]) == (12, 1), status
assert "broken.jpg" in status["failures"][0]["path"], status["failures"]
print("search by image finds the photo itself first; text search gives 5 hits;",
      "status: 12 indexed, 1 failed with", repr(status["failures"][0]["reason"]))
PYTHON

step "the installed window, offscreen: start, then quit (SIGTERM, as a logout sends)"
chroot --userspec=1000:1000 "$CR" env -i HOME=$HOME_IN PATH=/usr/bin:/bin LANG=C.UTF-8 \
    QT_QPA_PLATFORM=offscreen imagesearch-gui --library $HOME_IN/gui-library \
    > "$WORK/gui.log" 2>&1 &
GUI=$!
for _ in $(seq 300); do
    [ -f "$UHOME/gui-library/catalog.sqlite3" ] && break
    kill -0 $GUI 2>/dev/null || { cat "$WORK/gui.log"; fail "the window did not start"; }
    sleep 0.2
done
[ -f "$UHOME/gui-library/catalog.sqlite3" ] || fail "the window did not open its library"
sleep 2
kill -TERM $GUI
STATUS=0; wait $GUI || STATUS=$?
cat "$WORK/gui.log"
[ $STATUS = 0 ] || fail "the window exited with status $STATUS"
grep -q Traceback "$WORK/gui.log" && fail "the window printed a traceback"
[ -f "$UHOME/gui-library/window.ini" ] || fail "the window state was not saved on quitting"
echo "window started, opened its library and quit with status 0"
leftover=$(app_processes "")
[ -z "$leftover" ] || fail "processes left running: $leftover"

step "uninstall: the program goes, the library and the models stay"
chroot "$CR" env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq imagesearch \
    > "$WORK/apt-remove.log" 2>&1 || { cat "$WORK/apt-remove.log"; fail "apt could not remove it"; }
[ ! -e "$CR/opt/imagesearch" ] && [ ! -e "$CR/usr/bin/imagesearch" ] || fail "files left behind"
test -f "$UHOME/.local/share/imagesearch/catalog.sqlite3" || fail "the library was removed"
test -f "$UHOME/.cache/imagesearch/models/$TINY/manifest.json" || fail "the model was removed"
echo "removed; kept $HOME_IN/.local/share/imagesearch and $HOME_IN/.cache/imagesearch/models"

printf '\nSMOKE TEST PASSED\n'
