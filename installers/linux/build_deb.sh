#!/usr/bin/env bash
# The Linux package: the frozen app (PyInstaller, one folder) in /opt/imagesearch, its two
# commands in /usr/bin, the desktop entry, AppStream metainfo and icons.
#
#   installers/linux/build_venv.sh                 # once: the build environment
#   installers/linux/build_deb.sh [VENV]           # -> build/imagesearch_VERSION_ARCH.deb
#
# Needs dpkg-deb, desktop-file-validate (desktop-file-utils) and appstreamcli (appstream).
# SKIP_FREEZE=1 packages the frozen app already in build/dist.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${1:-$ROOT/build/venv}
OUT=${OUT:-$ROOT/build}
ID=org.imagesearch.ImageSearch
cd "$ROOT"

VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
DEB="$OUT/imagesearch_${VERSION}_${ARCH}.deb"

desktop-file-validate "resources/$ID.desktop"
appstreamcli validate --no-net "resources/$ID.metainfo.xml"

if [ "${SKIP_FREEZE:-0}" != 1 ]; then
    "$VENV/bin/pyinstaller" --noconfirm --log-level WARN --distpath "$OUT/dist" \
        --workpath "$OUT/pyinstaller" installers/imagesearch.spec
fi
test -x "$OUT/dist/imagesearch/imagesearch" && test -x "$OUT/dist/imagesearch/imagesearch-gui"

STAGE="$OUT/deb-root"
rm -rf "$STAGE"
mkdir -p "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/DEBIAN"
cp -a "$OUT/dist/imagesearch" "$STAGE/opt/imagesearch"
ln -s /opt/imagesearch/imagesearch "$STAGE/usr/bin/imagesearch"
ln -s /opt/imagesearch/imagesearch-gui "$STAGE/usr/bin/imagesearch-gui"
install -Dm644 "resources/$ID.desktop" "$STAGE/usr/share/applications/$ID.desktop"
install -Dm644 "resources/$ID.metainfo.xml" "$STAGE/usr/share/metainfo/$ID.metainfo.xml"
for png in imagesearch/gui/icons/imagesearch-*.png; do
    size=${png##*-}; size=${size%.png}
    install -Dm644 "$png" "$STAGE/usr/share/icons/hicolor/${size}x${size}/apps/$ID.png"
done
install -Dm644 resources/imagesearch.svg "$STAGE/usr/share/icons/hicolor/scalable/apps/$ID.svg"
install -d "$STAGE/usr/share/doc/imagesearch"
cat > "$STAGE/usr/share/doc/imagesearch/copyright" <<COPYRIGHT
imagesearch $VERSION, MIT License. /opt/imagesearch/_internal holds the Python runtime
and the libraries the app is built from (PyTorch, open_clip, FAISS, OpenCV, Qt for
Python, SQLAlchemy, ...), each under its own license, as its dist-info folder states.
COPYRIGHT

# The newest C library version any bundled program or library asks for (the machine that
# built Python and the bundle decides it).
GLIBC=$(find "$STAGE/opt/imagesearch" -type f \( -name '*.so*' -o -perm -u+x \) -print0 \
    | xargs -0 readelf -V 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sort -Vu | tail -1 \
    || true)  # readelf fails on the files that are not ELF
GLIBC=${GLIBC#GLIBC_}

# What the bundle does not carry: the C library, and graphics, X11 and Wayland libraries
# that Qt's display plugins load from the system. installers/linux/smoke_test.sh checks
# that, installed with these, every library in the bundle finds what it links to.
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: imagesearch
Version: $VERSION
Architecture: $ARCH
Maintainer: The imagesearch maintainers <maintainers@imagesearch.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
Depends: libc6 (>= $GLIBC), libfontconfig1, libfreetype6, libglib2.0-0t64 | libglib2.0-0,
 libdbus-1-3, libgl1, libegl1, libx11-6, libx11-xcb1, libxcb1, libxkbcommon0,
 libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, libxcb-image0,
 libxcb-render-util0, libxcb-randr0, libxcb-shape0, libxcb-xkb1, libxcb-shm0,
 libxcb-sync1, libxcb-xfixes0, libxcb-render0, libwayland-client0,
 libwayland-cursor0, libwayland-egl1
Section: graphics
Priority: optional
Description: find photos in your own folders by an image or a description
 imagesearch indexes your photo folders on your own computer and finds photos
 by a dropped image, a typed description, or both. Folders are watched for new,
 changed, moved and deleted photos. A desktop app (imagesearch-gui) and a
 command line (imagesearch). Model weights are downloaded on first use, or
 installed from a file (imagesearch models install).
CONTROL

# xz packs best and every dpkg reads it; DEB_COMPRESSION=gzip builds faster for testing.
dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-xz}" --threads-max="$(nproc)" \
    --build "$STAGE" "$DEB"
rm -rf "$STAGE"
echo "built $DEB: $(du -m "$DEB" | cut -f1) MB; installed: $(du -sm "$OUT/dist/imagesearch" | cut -f1) MB in /opt/imagesearch"
