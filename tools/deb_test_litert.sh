#!/usr/bin/env bash
# The aarch64 LiteRT wheel and a bundle's head under qemu-aarch64, in a minute: does `train` run?
#
#   tools/deb_test_litert.sh [HEAD.tflite] [LITERT_VERSION]     (as root; defaults: build/deb/bundle, the pin)
#
# No debootstrap and no binfmt_misc: Debian 12's arm64 Python 3.11 and NumPy are unpacked (dpkg-deb -x,
# nothing configured) into var/deb-test/litert-sysroot and run with `qemu-aarch64-static -L`, in a private
# mount namespace that hides the host's CPU topology (as tools/deb_test.sh does). The head's `train`
# signature runs three steps twice: through the stock SignatureRunner, then through the daemon's
# make_cpu_interpreter. Every aarch64 wheel from 1.4.0 to 2.3.0 crashes in the first (it resizes the scalar
# learning rate to rank 0: reports/arm64.md); a wheel where it runs no longer needs the daemon's workaround.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then echo "deb_test_litert: run as root (a private mount namespace)" >&2; exit 2; fi
HEAD=$(realpath "${1:-build/deb/bundle/head_full.tflite}")
VERSION=${2:-$(sed -n 's/^ai-edge-litert==//p' requirements-dev.txt)}
WORK=$(realpath -m "${DEB_TEST_DIR:-var/deb-test}")
S=$WORK/litert-sysroot
W=$WORK/litert-$VERSION
[ -f "$HEAD" ] || { echo "deb_test_litert: no head model $HEAD (make deb builds build/deb/bundle)" >&2; exit 2; }
command -v qemu-aarch64-static >/dev/null || { echo "deb_test_litert: needs qemu-user-static (Debian)" >&2; exit 2; }
dpkg --print-foreign-architectures | grep -qx arm64 || { echo "deb_test_litert: needs dpkg --add-architecture arm64 && apt-get update" >&2; exit 2; }

if [ ! -x "$S/usr/bin/python3.11" ]; then
    echo "== Debian 12 arm64 Python 3.11 and NumPy, unpacked into $S"
    rm -rf "$S.debs" "$S" && mkdir -p "$S.debs"
    pkgs="libc6 libgcc-s1 libstdc++6 gcc-12-base zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libzstd1
          libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libdb5.3 libgdbm6 libgdbm-compat4 libnsl2
          libtirpc3 libcrypt1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2
          libpython3.11-minimal libpython3.11-stdlib python3.11-minimal python3.11 python3-numpy
          libblas3 liblapack3 libgfortran5 libgomp1"
    (cd "$S.debs" && apt-get download -q $(for p in $pkgs; do echo "$p:arm64"; done) >/dev/null 2>&1)
    for f in "$S.debs"/*.deb; do dpkg-deb -x "$f" "$S"; done
    ln -sf blas/libblas.so.3 "$S/usr/lib/aarch64-linux-gnu/libblas.so.3"       # what update-alternatives does
    ln -sf lapack/liblapack.so.3 "$S/usr/lib/aarch64-linux-gnu/liblapack.so.3"
    rm -rf "$S.debs"
fi
if [ ! -d "$W/ai_edge_litert" ]; then
    echo "== ai-edge-litert $VERSION for aarch64 (cp311) from the package registry"
    rm -rf "$W" "$W.whl" && mkdir -p "$W.whl"
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
        $(for v in $(seq 17 36); do echo --platform manylinux_2_${v}_aarch64; done) -d "$W.whl" "ai-edge-litert==$VERSION"
    python3 -m zipfile -e "$W.whl"/ai_edge_litert-*.whl "$W"
    rm -rf "$W.whl"
fi

cat >"$WORK/litert_train.py" <<'EOF'
import sys
import numpy as np
from autlearn.runtime import interpreter as runtime
how, head = sys.argv[1], sys.argv[2]
it = runtime.make_cpu_interpreter(head, 1) if how == "daemon" else runtime.Interpreter(model_path=head, num_threads=1)
train = it.get_signature_runner("train")
feed = {k: np.zeros(d["shape"], d["dtype"]) for k, d in train.get_input_details().items()}
feed["x"] = np.random.default_rng(0).random(feed["x"].shape).astype(np.float32)
feed["y"] = (np.arange(len(feed["y"])) % 10).astype(np.int32)
feed["mask"][:], feed["active"][:10], feed["lr"] = 1, 1, np.array(0.01, np.float32)
print("losses " + " ".join(f"{float(train(**feed)['loss']):.4f}" for _ in range(3)))
EOF
rc_all=0
for how in stock daemon; do
    rc=0
    out=$(unshare --mount --propagation private -- sh -c 'mount -t tmpfs tmpfs /sys/devices/system/cpu && exec "$@"' -- \
        env -i PATH=/usr/bin:/bin PYTHONPATH="$W:$PWD/daemon" \
        qemu-aarch64-static -L "$S" "$S/usr/bin/python3.11" -I -c "import sys; sys.path[:0] = ['$W', '$PWD/daemon']; exec(open('$WORK/litert_train.py').read())" \
        "$how" "$HEAD" 2>&1) || rc=$?
    line=$(printf '%s\n' "$out" | grep -v -e '^Error in cpuinfo' -e '^INFO:' | tail -1)
    printf '%-7s runner, ai-edge-litert %s aarch64: exit status %s: %s\n' "$how" "$VERSION" "$rc" "$line"
    [ "$how" = daemon ] && [ "$rc" -ne 0 ] && rc_all=1
done
exit $rc_all
