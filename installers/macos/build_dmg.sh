#!/usr/bin/env bash
# The macOS disk image: imagesearch.app (built by the PyInstaller spec) beside a link to
# /Applications, so installing is a drag.
#
#   pyinstaller --noconfirm --distpath build/dist --workpath build/pyinstaller installers/imagesearch.spec
#   installers/macos/build_dmg.sh            # -> build/imagesearch-VERSION-macos-ARCH.dmg
#
# Runs on macOS (hdiutil). The app is signed ad hoc by PyInstaller, not with a Developer
# ID, and not notarized: the first start needs right-click > Open.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/build}
APP="$OUT/dist/imagesearch.app"
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]["version"])')
DMG="$OUT/imagesearch-$VERSION-macos-$(uname -m).dmg"

test -x "$APP/Contents/MacOS/imagesearch-gui" && test -x "$APP/Contents/MacOS/imagesearch"
codesign --verify --deep "$APP"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp -R "$APP" "$STAGE/"
ln -s /Applications "$STAGE/Applications"
rm -f "$DMG"
hdiutil create -volname imagesearch -srcfolder "$STAGE" -fs HFS+ -format UDZO -ov "$DMG"
echo "built $DMG: $(du -m "$DMG" | cut -f1) MB; the app: $(du -sm "$APP" | cut -f1) MB"
