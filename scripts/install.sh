#!/usr/bin/env bash
# Installs p11ha from `cargo build --release` output, for systems without the .deb
# (packaging/build-deb.sh). Run from anywhere after `cargo build --release`:
#
#   scripts/install.sh              # PREFIX=/usr/local
#   PREFIX=/usr DESTDIR=/tmp/stage scripts/install.sh   # staging, e.g. for a distribution package
#   scripts/install.sh --uninstall  # removes what the same settings would install
#
# Places, under $DESTDIR:
#   libp11ha.so (stripped)  $MODULEDIR, p11-kit's PKCS#11 module directory
#                           (pkg-config p11-kit-1 p11_module_path, else $PREFIX/lib/pkcs11)
#   p11ha.module            $MODULECONFDIR, where p11-kit reads module files
#                           (pkg-config p11-kit-1 p11_module_configs, else
#                           $PREFIX/share/p11-kit/modules); names the library by absolute path
#   p11ha (stripped)        $PREFIX/bin
#   p11ha.h                 $PREFIX/include
#   p11ha.1.gz              $PREFIX/share/man/man1 (from `p11ha --man`, the text of --help)
#   config examples         $PREFIX/share/doc/p11ha/examples
# Each of MODULEDIR, MODULECONFDIR may be set to override. Needs install, strip, gzip.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
release=$target/release

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
p11kit_var() { pkg-config --variable="$1" p11-kit-1 2>/dev/null || true; }
MODULEDIR=${MODULEDIR:-$(p11kit_var p11_module_path)}
MODULEDIR=${MODULEDIR:-$PREFIX/lib/pkcs11}
MODULECONFDIR=${MODULECONFDIR:-$(p11kit_var p11_module_configs)}
MODULECONFDIR=${MODULECONFDIR:-$PREFIX/share/p11-kit/modules}

files=(
    "$MODULEDIR/libp11ha.so"
    "$MODULECONFDIR/p11ha.module"
    "$PREFIX/bin/p11ha"
    "$PREFIX/include/p11ha.h"
    "$PREFIX/share/man/man1/p11ha.1.gz"
    "$PREFIX/share/doc/p11ha/examples/Chrystoki.conf"
    "$PREFIX/share/doc/p11ha/examples/crystoki.ini"
    "$PREFIX/share/doc/p11ha/examples/README.md"
)

if [ "${1:-}" = --uninstall ]; then
    for f in "${files[@]}"; do
        rm -f -- "$DESTDIR$f"
    done
    rmdir -- "$DESTDIR$PREFIX/share/doc/p11ha/examples" "$DESTDIR$PREFIX/share/doc/p11ha" 2>/dev/null || true
    echo "install.sh: removed p11ha from ${DESTDIR:-/}"
    exit 0
elif [ $# -ne 0 ]; then
    echo "usage: [PREFIX=...] [DESTDIR=...] $0 [--uninstall]" >&2
    exit 2
fi

for f in "$release/libp11ha.so" "$release/p11ha"; do
    if [ ! -f "$f" ]; then
        echo "install.sh: $f not found: run cargo build --release first" >&2
        exit 1
    fi
done

# install -D creates the directories; -m sets the mode whatever the umask.
install -D -m 0644 "$release/libp11ha.so" "$DESTDIR$MODULEDIR/libp11ha.so"
# What Debian's dh_strip does for shared libraries: keep the dynamic symbols (the C ABI).
strip --strip-unneeded "$DESTDIR$MODULEDIR/libp11ha.so"
install -D -m 0755 "$release/p11ha" "$DESTDIR$PREFIX/bin/p11ha"
strip "$DESTDIR$PREFIX/bin/p11ha"

# The library's path without DESTDIR: where it will be once the staged tree is in place.
install -d -m 0755 "$DESTDIR$MODULECONFDIR"
sed "s|^module: .*|module: $MODULEDIR/libp11ha.so|" "$repo/packaging/p11ha.module" >"$DESTDIR$MODULECONFDIR/p11ha.module"
chmod 0644 "$DESTDIR$MODULECONFDIR/p11ha.module"

install -D -m 0644 "$repo/include/p11ha.h" "$DESTDIR$PREFIX/include/p11ha.h"
install -d -m 0755 "$DESTDIR$PREFIX/share/man/man1"
"$release/p11ha" --man | gzip -9n >"$DESTDIR$PREFIX/share/man/man1/p11ha.1.gz"
chmod 0644 "$DESTDIR$PREFIX/share/man/man1/p11ha.1.gz"
install -d -m 0755 "$DESTDIR$PREFIX/share/doc/p11ha/examples"
install -m 0644 "$repo/config/Chrystoki.conf" "$repo/config/crystoki.ini" "$repo/config/README.md" \
    "$DESTDIR$PREFIX/share/doc/p11ha/examples/"

for f in "${files[@]}"; do
    echo "installed $DESTDIR$f"
done
