#!/usr/bin/env bash
# Fill wheelhouse/<set>/ with a wheel for every pin of a lock file, on the host, so image builds need no
# network (inside `docker build` on some machines TLS to package indexes fails; offline builds are also
# reproducible). Sdists (e.g. sagemaker-training, which has a C extension) are built into wheels here.
#   containers/wheelhouse.sh LOCK_FILE DEST_DIR [DEBIAN_PACKAGE...]
# Debian packages named after the folder (shared libraries a wheel needs but does not bundle, e.g. MXNet's
# libgomp1) are fetched with `apt-get download` into DEST_DIR/debs (the host must be Debian bookworm, as the
# images are; elsewhere the Dockerfile fetches them itself).
# The wheels must match the images (Linux x86_64, CPython 3.11, glibc >= bookworm's): run it on such a
# host, or in a container: docker run --rm -v "$PWD:/src" -w /src python:3.11-bookworm make wheelhouse
set -euo pipefail
lock=$1
dest=$2
shift 2
debs=("$@")
py=${PYTHON:-python3.11}

tags=$("$py" -c 'import platform, sys; print(sys.platform, platform.machine(), "%d.%d" % sys.version_info[:2])')
if [ "$tags" != "linux x86_64 3.11" ]; then
    echo "wheelhouse: this host is '$tags', the images need 'linux x86_64 3.11' wheels." >&2
    echo "  run: docker run --rm -v \"\$PWD:/src\" -w /src python:3.11-bookworm make wheelhouse" >&2
    exit 2
fi

mkdir -p "$dest"
stamp="$dest/.lock-sha256"
want=$(cat "$lock" <(printf '%s\n' "${debs[@]}") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "wheelhouse $dest is up to date with $lock"
    exit 0
fi

# The lock file is complete (every transitive pin), so --no-deps: exactly what it says, nothing more.
# --prefer-binary avoids building where a wheel exists.
# (grep drops the noise of pip.conf index locations that exist on some machines and not others)
"$py" -m pip download --quiet --no-cache-dir --disable-pip-version-check --no-deps --prefer-binary --dest "$dest" -r "$lock" \
    2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
shopt -s nullglob
sdists=("$dest"/*.tar.gz "$dest"/*.zip)
for sdist in "${sdists[@]}"; do
    echo "wheelhouse: building $(basename "$sdist") into a wheel"
    "$py" -m pip wheel --quiet --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir "$dest" "$sdist"
    rm -f "$sdist"
done
if [ ${#debs[@]} -gt 0 ]; then
    if grep -q bookworm /etc/os-release 2>/dev/null && command -v apt-get >/dev/null; then
        mkdir -p "$dest/debs"
        rm -f "$dest"/debs/*.deb
        (cd "$dest/debs" && apt-get download -qq "${debs[@]}") \
            || (apt-get update -qq && cd "$dest/debs" && apt-get download -qq "${debs[@]}")
    else
        echo "wheelhouse: not a Debian bookworm host: the image build fetches ${debs[*]} itself" >&2
    fi
fi
echo "$want" >"$stamp"
echo "wheelhouse $dest: $(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1)"
