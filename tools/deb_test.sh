#!/usr/bin/env bash
# `make deb-test`: the package on a clean Debian 12 system, proven in a chroot.
#
#   tools/deb_test.sh build/deb/autlearn_<version>_<arch>.deb
#
# The root has the package's architecture. For another one than this machine's (arm64 on x86-64:
# `make deb-test ARCH=arm64`) every program in it runs through qemu-user-static: its binfmt_misc handler
# is registered for the run and removed afterwards (binfmt_misc mounted only if it was not), so the
# machine is left as it was; waits are DEB_TEST_SLOW (default 10) times longer under emulation.
#
# 1. A minimal Debian 12 root made by debootstrap (--variant=minbase), kept pristine in
#    var/deb-test/base-<arch> and copied afresh for every run; downloaded .debs are kept in
#    var/deb-test/apt-archives.
# 2. `apt-get install ./autlearn_*.deb` in the copy: its dependencies come from the Debian archive (the
#    mirror this machine's apt uses), nothing from pip.
# 3. Checks: user, group, directories, conffile, enabled unit; `autlearnd --check-config`; the vendored
#    LiteRT interpreter imports with Debian's NumPy.
# 4. The daemon in the foreground as the autlearn user (no systemd in a chroot: the unit's runtime
#    directory and $NOTIFY_SOCKET are provided by this script, which listens like systemd would),
#    with the packaged config and bundle; PNG digits dropped into the inbox; `autlearnctl status` and one
#    automatic training round; SIGHUP reload; READY/WATCHDOG/STOPPING notifications; clean SIGTERM stop.
# 5. Upgrade to a repacked newer version keeps the state, the feature cache and the edited conffile;
#    remove keeps state and user; purge removes state, cache, config and the user.
# 6. The same root with systemd, booted with systemd-nspawn: the real unit and its sandbox at work —
#    started at boot (READY), sandboxed (own network namespace, seccomp, no capabilities), a training
#    round, reload, the watchdog kept fed past WatchdogSec, no denials in the journal; dpkg -r stops it,
#    dpkg -i starts it, purge removes it. DEB_TEST_SYSTEMD=0 skips this stage. Under emulation a root
#    that does not boot is reported as not checkable there (SKIP), not as a failure.
#
# Runs as root, in a private mount namespace (every mount vanishes with the script). Environment:
#   DEB_TEST_DIR (var/deb-test), DEB_TEST_MIRROR (from /etc/apt/sources*), DEB_TEST_KEEP=1 keeps the root
#   (var/deb-test/rootfs-<arch>), DEB_TEST_FROM=DIR starts from a copy of DIR instead of the pristine base
#   (a root kept after an install: reruns the later stages without the emulated install's ~40 minutes).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then echo "deb-test: run as root (debootstrap, chroot, mounts)" >&2; exit 2; fi
if [ -z "${DEB_TEST_IN_NS:-}" ]; then
    exec env DEB_TEST_IN_NS=1 unshare --mount --propagation private -- "$0" "$@"
fi

# A kill still runs the EXIT traps (unmounts, the binfmt_misc handler removed).
trap 'exit 143' TERM
trap 'exit 130' INT
DEB=$(realpath "${1:?usage: tools/deb_test.sh build/deb/autlearn_VERSION_ARCH.deb}")
WORK=$(realpath -m "${DEB_TEST_DIR:-var/deb-test}")
SUITE=bookworm
ARCH=$(dpkg-deb -f "$DEB" Architecture)
HOST_ARCH=$(dpkg --print-architecture)
BASE=$WORK/base-$ARCH
ROOT=$WORK/rootfs-$ARCH
ARCHIVES=$WORK/apt-archives
T0=$(date +%s)
PASSED=0
FAILED=0
SKIPPED=0
RESULTS=()
PHASES=()
PHASE_NAME=""
PHASE_T=$T0
if [ "$ARCH" = "$HOST_ARCH" ]; then SLOW=${DEB_TEST_SLOW:-1}; else SLOW=${DEB_TEST_SLOW:-10}; fi

say() { printf '%s\n' "$*"; }
phase_end() { [ -n "$PHASE_NAME" ] && PHASES+=("$(printf '%5ss  %s' $(( $(date +%s) - PHASE_T )) "$PHASE_NAME")"); PHASE_NAME=""; }
phase() { phase_end; PHASE_NAME=$*; PHASE_T=$(date +%s); say ""; say "== $* ($(( $(date +%s) - T0 ))s)"; }
ok() { PASSED=$((PASSED + 1)); RESULTS+=("PASS  $1"); say "   ok: $1"; }
bad() { FAILED=$((FAILED + 1)); RESULTS+=("FAIL  $1"); say "   FAILED: $1${2:+ — $2}"; }
skip() { SKIPPED=$((SKIPPED + 1)); RESULTS+=("SKIP  $1"); say "   not checked: $1${2:+ — $2}"; }
check() {  # check NAME COMMAND...: pass when the command succeeds
    local name=$1; shift
    if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$(printf '%s' "$out" | tail -3 | tr '\n' ' ')"; fi
}
in_root() {  # a command in the test root with a clean environment
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        chroot "$ROOT" "$@"
}
summary() {
    phase_end
    say ""
    say "== deb-test summary ($(basename "$DEB") in a Debian 12 $ARCH root$([ "$ARCH" = "$HOST_ARCH" ] || echo " under qemu-user-static on $HOST_ARCH"), $(( $(date +%s) - T0 ))s)"
    for r in "${RESULTS[@]}"; do say "   $r"; done
    say "   $PASSED passed, $FAILED failed$([ "$SKIPPED" -eq 0 ] || echo ", $SKIPPED not checkable here")"
    say "   time per step:"
    for p in "${PHASES[@]}"; do say "   $p"; done
}

# The Debian mirror apt uses here (deb822 or one-line sources); debootstrap and the root use it too.
apt_uri() {  # apt_uri SUITE: the first URI serving SUITE
    local suite=$1
    { cat /etc/apt/sources.list 2>/dev/null; cat /etc/apt/sources.list.d/*.list 2>/dev/null; } |
        awk -v s="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) == s) { print $i; exit } break } }'
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" } {
            uri = ""; hit = 0
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/) { split(substr($i, 6), u, " "); for (k in u) if (u[k] != "") { uri = u[k]; break } }
                if ($i ~ /^Suites:/) { n = split(substr($i, 8), x, " "); for (k = 1; k <= n; k++) if (x[k] == s) hit = 1 }
            }
            if (hit && uri != "") { print uri; exit }
        }' "$f"
    done
}
MIRROR=${DEB_TEST_MIRROR:-$(apt_uri "$SUITE" | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=$(apt_uri "$SUITE-security" | head -1)

# ---------------------------------------------------------------------------------------------------
# Another architecture: qemu-user-static's handler for it, registered in binfmt_misc for this run only.
BINFMT=/proc/sys/fs/binfmt_misc
BINFMT_MOUNTED=""
BINFMT_REGISTERED=""
binfmt_release() {
    if [ -n "$BINFMT_REGISTERED" ] && [ -e "$BINFMT/$BINFMT_REGISTERED" ]; then
        echo -1 >"$BINFMT/$BINFMT_REGISTERED" || true
        say "   binfmt_misc: $BINFMT_REGISTERED handler removed"
    fi
    BINFMT_REGISTERED=""
    if [ -n "$BINFMT_MOUNTED" ]; then umount "$BINFMT" 2>/dev/null || true; BINFMT_MOUNTED=""; fi
}
binfmt_setup() {  # binfmt_setup: make the root's programs run here, or say why not
    local qarch conf name
    qarch=$(dpkg-architecture -a"$ARCH" -qDEB_HOST_GNU_CPU 2>/dev/null)
    if [ ! -x "/usr/bin/qemu-$qarch-static" ]; then
        say "   installing qemu-user-static from Debian (without binfmt-support: nothing registered for good)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            qemu-user-static >/dev/null
    fi
    conf=/usr/lib/binfmt.d/qemu-$qarch.conf
    [ -f "$conf" ] || { say "   no $conf: qemu-user-static cannot run $ARCH programs here"; return 1; }
    name=$(cut -d: -f2 "$conf")
    if [ ! -e "$BINFMT/register" ]; then
        mount -t binfmt_misc binfmt_misc "$BINFMT" || { say "   cannot mount binfmt_misc on $BINFMT"; return 1; }
        BINFMT_MOUNTED=1
    fi
    if [ -e "$BINFMT/$name" ]; then
        say "   binfmt_misc: a $name handler is already registered here; used as it is, left in place"
    else
        cat "$conf" >"$BINFMT/register" || { say "   binfmt_misc: registering $name was refused"; return 1; }
        BINFMT_REGISTERED=$name
        say "   binfmt_misc: $name handler registered for this run ($(sed -n 's/^interpreter //p' "$BINFMT/$name"), flags $(sed -n 's/^flags: //p' "$BINFMT/$name"))"
    fi
}
trap binfmt_release EXIT

phase "Debian 12 $ARCH root ($BASE)"
if [ "$ARCH" != "$HOST_ARCH" ]; then
    binfmt_setup || { bad "run $ARCH programs on $HOST_ARCH with qemu-user-static"; summary; exit 1; }
fi
if ! command -v debootstrap >/dev/null; then
    say "   installing debootstrap from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
if [ ! -x "$BASE/usr/bin/apt-get" ]; then
    rm -rf "$BASE.tmp" && mkdir -p "$WORK"
    say "   debootstrap --arch=$ARCH --variant=minbase $SUITE from $MIRROR (first run only)"
    t=$(date +%s)
    if ! debootstrap --arch="$ARCH" --variant=minbase "$SUITE" "$BASE.tmp" "$MIRROR" >"$WORK/debootstrap-$ARCH.log" 2>&1; then
        tail -20 "$WORK/debootstrap-$ARCH.log"; bad "debootstrap"; summary; exit 1
    fi
    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        [ -n "$SECURITY" ] && echo "deb $SECURITY $SUITE-security main"
    } >"$BASE.tmp/etc/apt/sources.list"
    rm -rf "$BASE.tmp/var/cache/apt/archives/"*.deb
    mv "$BASE.tmp" "$BASE"
    say "   made in $(( $(date +%s) - t ))s"
else
    say "   cached (delete $BASE to make it again)"
fi
rm -rf "$ROOT"
if [ -n "${DEB_TEST_FROM:-}" ]; then
    say "   starting from a copy of $DEB_TEST_FROM (DEB_TEST_FROM), not from the pristine base"
    cp -a "$DEB_TEST_FROM" "$ROOT"
else
    cp -a "$BASE" "$ROOT"
fi
mkdir -p "$ARCHIVES/partial"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys"
if [ "$ARCH" != "$HOST_ARCH" ]; then
    # Under qemu-user, /sys/devices/system/cpu is the host's (x86 cores): LiteRT's cpuinfo (XNNPACK) reads
    # it as arm64 topology and the interpreter segfaults in allocate_tensors. Hidden, cpuinfo falls back to
    # defaults and XNNPACK runs; a real board has its own. The rest of /sys (pyudev) stays.
    mount -t tmpfs -o mode=0755 tmpfs "$ROOT/sys/devices/system/cpu"
fi
mount --rbind /dev "$ROOT/dev"
mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run"
mount --bind "$ARCHIVES" "$ROOT/var/cache/apt/archives"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
cleanup() {
    if [ -n "${DAEMON_PID:-}" ]; then kill "$DAEMON_PID" 2>/dev/null || true; fi
    if [ -n "${LISTENER_PID:-}" ]; then kill "$LISTENER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    for m in var/cache/apt/archives run dev sys/devices/system/cpu sys proc; do umount -l "$ROOT/$m" 2>/dev/null || true; done
    if [ -z "${DEB_TEST_KEEP:-}" ]; then rm -rf "$ROOT"; fi
    binfmt_release
}
trap cleanup EXIT
if [ "$ARCH" != "$HOST_ARCH" ]; then
    check "$ARCH programs run in the root: $(in_root uname -m 2>&1) ($(file -b "$ROOT/bin/true" 2>/dev/null | cut -d, -f1-2))" \
        in_root /bin/true
fi

# ---------------------------------------------------------------------------------------------------
phase "apt-get install ./$(basename "$DEB") (dependencies from $MIRROR)"
cp "$DEB" "$ROOT/tmp/"
t=$(date +%s)
if in_root apt-get update -qq >"$WORK/apt.log" 2>&1 \
   && in_root apt-get install -y "/tmp/$(basename "$DEB")" >>"$WORK/apt.log" 2>&1; then
    ok "apt-get install of the package and its Debian dependencies ($(( $(date +%s) - t ))s)"
else
    tail -25 "$WORK/apt.log"; bad "apt-get install"; summary; exit 1
fi
say "   $(in_root dpkg-query -W -f='${Package} ${Version}, ' python3 python3-numpy python3-zmq python3-pil python3-pyudev python3-systemd autlearn)"
check "nothing from pip: no pip in the root, no package outside dpkg's" \
    in_root sh -c '! python3 -m pip --version && [ -z "$(ls /usr/local/lib/python3*/dist-packages 2>/dev/null)" ]'

phase "what the package set up"
check "system user and group autlearn (home /var/lib/autlearn, no login shell)" \
    in_root sh -c 'getent passwd autlearn | grep -q ":/var/lib/autlearn:/usr/sbin/nologin$" && getent group autlearn'
check "state and cache directories owned by autlearn, mode 0750" \
    in_root sh -c '[ "$(stat -c %U:%G:%a /var/lib/autlearn /var/cache/autlearn | sort -u)" = autlearn:autlearn:750 ]'
check "inbox /var/lib/autlearn/inbox (group-writable, setgid)" \
    in_root sh -c '[ "$(stat -c %U:%G:%a /var/lib/autlearn/inbox)" = autlearn:autlearn:2770 ]'
check "/etc/autlearn/autlearnd.toml is a conffile" \
    in_root sh -c "dpkg-query -W -f='\${Conffiles}' autlearn | grep -q ' /etc/autlearn/autlearnd.toml '"
check "autlearnd.service enabled (multi-user.target.wants)" \
    in_root test -L /etc/systemd/system/multi-user.target.wants/autlearnd.service
check "no cloud builder or TensorFlow in the package or the root" \
    in_root sh -c '! dpkg -L autlearn | grep -q -e autlearn_build -e /tensorflow/ && ! python3 -c "import tensorflow"'
check "autlearnd --check-config /etc/autlearn/autlearnd.toml" \
    in_root autlearnd --check-config /etc/autlearn/autlearnd.toml
if out=$(in_root python3 -I -c '
import sys; sys.path[:0] = ["/usr/lib/autlearn", "/usr/lib/autlearn/vendor"]
import numpy, ai_edge_litert
from autlearn.runtime import interpreter as runtime
print(f"numpy {numpy.__version__} ({numpy.__file__}), ai-edge-litert {ai_edge_litert.__version__}, runtime {runtime.RUNTIME}")
' 2>&1); then ok "vendored LiteRT imports with Debian's NumPy: $out"; else bad "vendored LiteRT import" "$out"; fi
# The packaged head's `train` (a scalar learning-rate input) on its own, first through the stock signature
# runner (every aarch64 LiteRT wheel segfaults resizing an input to rank 0: reports/arm64.md; printed, not
# judged), then through the daemon's runner, which skips that resize; the losses must fall.
cat >"$ROOT/root/train_once.py" <<'EOF'
import sys; sys.path[:0] = ["/usr/lib/autlearn", "/usr/lib/autlearn/vendor"]
import numpy as np
from autlearn.runtime import interpreter as runtime
head = "/usr/share/autlearn/bundle/head_full.tflite"
it = runtime.make_cpu_interpreter(head, 1) if sys.argv[1] == "daemon" else runtime.Interpreter(model_path=head, num_threads=1)
train = it.get_signature_runner("train")
feed = {k: np.zeros(d["shape"], d["dtype"]) for k, d in train.get_input_details().items()}
rng = np.random.default_rng(0)
feed["x"] = rng.random(feed["x"].shape).astype(np.float32)
feed["y"] = (np.arange(len(feed["y"])) % 10).astype(np.int32)
feed["mask"][:], feed["active"][:10], feed["lr"] = 1, 1, np.array(0.01, np.float32)
losses = [float(train(**feed)["loss"]) for _ in range(3)]
assert losses[-1] < losses[0], losses
print("losses " + " ".join(f"{v:.4f}" for v in losses))
EOF
rc=0; out=$(in_root python3 -I /root/train_once.py stock 2>&1) || rc=$?
say "   the stock SignatureRunner on the head's train: $([ $rc -eq 0 ] && echo "ran, $out" || echo "exit status $rc ($(printf '%s' "$out" | grep -m1 -io 'segmentation fault' || printf '%s' "$out" | tail -1))")"
if out=$(in_root python3 -I /root/train_once.py daemon 2>&1); then
    ok "the packaged head trains (its train signature, a scalar input) through the daemon's runner: $(printf '%s' "$out" | tail -1)"
else bad "the packaged head's train signature through the daemon's runner" "$(printf '%s' "$out" | tail -3 | tr '\n' ' ')"; fi

# ---------------------------------------------------------------------------------------------------
phase "the daemon in the foreground, as autlearn, with the packaged config and bundle"
# What systemd would do for the unit: RuntimeDirectory=autlearn, and a notify socket to listen on.
in_root install -d -o autlearn -g autlearn -m 0750 /run/autlearn
cat >"$ROOT/run/notify_listener.py" <<'EOF'
import os, socket, sys, time
path = "/run/notify.sock"
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
with open("/run/notify.log", "a", buffering=1) as log:
    while True:
        msg = s.recv(4096).decode(errors="replace").replace("\n", " ")
        log.write(f"{time.monotonic():.3f} {msg}\n")
EOF
in_root python3 /run/notify_listener.py &
LISTENER_PID=$!
for _ in $(seq 50); do [ -S "$ROOT/run/notify.sock" ] && break; sleep 0.1; done
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 NOTIFY_SOCKET=/run/notify.sock WATCHDOG_USEC=3000000 \
    chroot "$ROOT" setpriv --reuid=autlearn --regid=autlearn --init-groups --inh-caps=-all \
    /usr/bin/autlearnd --config /etc/autlearn/autlearnd.toml >"$WORK/autlearnd.log" 2>&1 &
DAEMON_PID=$!
t=$(date +%s)
for _ in $(seq $((600 * SLOW))); do
    grep -q 'READY=1' "$ROOT/run/notify.log" 2>/dev/null && break
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
done
if grep -q 'READY=1' "$ROOT/run/notify.log" 2>/dev/null; then
    ok "started and sent READY=1 ($(( $(date +%s) - t ))s)"
else
    tail -20 "$WORK/autlearnd.log"; bad "daemon start (READY=1)"
fi
check "control socket /run/autlearn/control.sock is 0660 autlearn:autlearn" \
    in_root sh -c '[ "$(stat -c %U:%G:%a /run/autlearn/control.sock)" = autlearn:autlearn:660 ]'
check "autlearnctl status" in_root autlearnctl --timeout $((10 * SLOW)) status
in_root autlearnctl --timeout $((10 * SLOW)) status 2>&1 | sed 's/^/   | /' || true

# Digits drawn with Pillow's built-in font, 8 per class, dropped into the watched inbox while it runs.
cat >"$ROOT/root/make_digits.py" <<'EOF'
import os, random
from PIL import Image, ImageDraw, ImageFont
random.seed(6)
font = ImageFont.load_default()
for digit in range(10):
    d = f"/var/lib/autlearn/inbox/{digit}"
    os.makedirs(d, exist_ok=True)
    for k in range(8):
        img = Image.new("L", (12, 14), 0)
        ImageDraw.Draw(img).text((3 + random.randint(-1, 1), 1 + random.randint(-1, 1)), str(digit), fill=255, font=font)
        img = img.resize((28, 28), Image.BILINEAR).rotate(random.uniform(-12, 12))
        img.save(f"{d}/{digit}_{k}.png")
EOF
in_root python3 /root/make_digits.py
check "80 PNG images written into /var/lib/autlearn/inbox/<label>/" \
    in_root sh -c '[ "$(find /var/lib/autlearn/inbox -name "*.png" | wc -l)" = 80 ]'
cat >"$ROOT/root/last_round.py" <<'EOF'
import json, sys
r = json.load(sys.stdin).get("last_round")
if r:
    print(f"round #{r['round_id']} {r['outcome']} in {r['seconds']:.2f}s: {r['detail']}")
EOF
t=$(date +%s)
round=""
for _ in $(seq $((240 * SLOW))); do
    round=$(in_root autlearnctl --timeout $((10 * SLOW)) --json status 2>/dev/null | in_root python3 /root/last_round.py || true)
    [ -n "$round" ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.5
done
if [ -n "$round" ]; then ok "inbox noticed, one automatic training round: $round ($(( $(date +%s) - t ))s)"
else tail -20 "$WORK/autlearnd.log"; bad "a training round within $((120 * SLOW)) s"; fi
in_root autlearnctl --timeout $((10 * SLOW)) --json status >"$WORK/status-$ARCH.json" 2>/dev/null || true
in_root autlearnctl --timeout $((10 * SLOW)) status 2>&1 | sed 's/^/   | /' || true
for u in alice mallory; do  # (already there in a DEB_TEST_FROM root kept after a run: purge leaves them)
    in_root sh -c "getent passwd $u >/dev/null || adduser --quiet --disabled-password --gecos '' $u >/dev/null"
done
in_root adduser --quiet alice autlearn
check "autlearnctl for a member of the autlearn group (alice)" \
    in_root setpriv --reuid=alice --regid=alice --init-groups autlearnctl --timeout $((5 * SLOW)) status
if out=$(in_root setpriv --reuid=mallory --regid=mallory --init-groups autlearnctl --timeout $((5 * SLOW)) status 2>&1); then
    bad "autlearnctl refused to a user outside the group (mallory)" "it answered"
else ok "autlearnctl refused to a user outside the group (mallory): $(printf '%s' "$out" | tail -1)"; fi
check "autlearnctl versions" in_root autlearnctl --timeout $((10 * SLOW)) versions
if out=$(in_root autlearnctl --timeout $((10 * SLOW)) predict /var/lib/autlearn/inbox/3/3_0.png 2>&1); then
    ok "autlearnctl predict: $(printf '%s' "$out" | head -1)"
else bad "autlearnctl predict" "$(printf '%s' "$out" | tail -3 | tr '\n' ' ')"; fi
kill -HUP "$DAEMON_PID" 2>/dev/null || true  # (a daemon that died already fails the checks below)
sleep $((2 * SLOW))
check "SIGHUP reloads the configuration" grep -q 'SIGHUP' "$WORK/autlearnd.log"
check "watchdog pings (WATCHDOG=1 at a third of WATCHDOG_USEC=3s)" \
    sh -c "[ \$(grep -c 'WATCHDOG=1' '$ROOT/run/notify.log') -ge 2 ]"
kill -TERM "$DAEMON_PID" 2>/dev/null || true
rc=0; wait "$DAEMON_PID" || rc=$?
DAEMON_PID=""
if [ "$rc" -eq 0 ]; then ok "SIGTERM: stopped with status 0"; else bad "SIGTERM stop" "exit status $rc"; fi
check "STOPPING=1 sent" grep -q 'STOPPING=1' "$ROOT/run/notify.log"

# ---------------------------------------------------------------------------------------------------
phase "upgrade, remove, purge"
state_digest() {
    in_root sh -c 'cd /var/lib/autlearn && find . -path ./inbox -prune -o -type f -print | sort | xargs sha256sum
                   ls /var/cache/autlearn' | sha256sum | cut -c1-16
}
before=$(state_digest)
sed -i 's/^min_new_samples = .*/min_new_samples = 10  # edited by deb-test/' "$ROOT/etc/autlearn/autlearnd.toml"
up=$WORK/upgrade
rm -rf "$up" && mkdir -p "$up"
dpkg-deb -R "$DEB" "$up/pkg"
old_version=$(sed -n 's/^Version: //p' "$up/pkg/DEBIAN/control")
sed -i "s/^Version: .*/Version: ${old_version}+debtest1/" "$up/pkg/DEBIAN/control"
dpkg-deb -b -Zgzip "$up/pkg" "$ROOT/tmp/autlearn_upgrade.deb" >/dev/null
if in_root apt-get install -y /tmp/autlearn_upgrade.deb >"$WORK/apt-upgrade.log" 2>&1; then
    ok "upgrade $old_version -> ${old_version}+debtest1"
else tail -15 "$WORK/apt-upgrade.log"; bad "upgrade"; fi
check "upgrade kept the state and the feature cache" test "$before" = "$(state_digest)"
check "upgrade kept the edited conffile" grep -q 'edited by deb-test' "$ROOT/etc/autlearn/autlearnd.toml"
check "the edited config is valid" in_root autlearnd --check-config /etc/autlearn/autlearnd.toml
in_root apt-get remove -y autlearn >"$WORK/apt-remove.log" 2>&1 || { tail "$WORK/apt-remove.log"; bad "apt-get remove"; }
check "remove keeps state, config and user" \
    in_root sh -c '[ -d /var/lib/autlearn/heads ] && [ -f /etc/autlearn/autlearnd.toml ] && getent passwd autlearn >/dev/null && ! [ -e /usr/bin/autlearnd ]'
in_root apt-get purge -y autlearn >"$WORK/apt-purge.log" 2>&1 || { tail "$WORK/apt-purge.log"; bad "apt-get purge"; }
check "purge removes state, cache, config, user and group" \
    in_root sh -c '! [ -e /var/lib/autlearn ] && ! [ -e /var/cache/autlearn ] && ! [ -e /etc/autlearn ] && ! getent passwd autlearn && ! getent group autlearn'

# ---------------------------------------------------------------------------------------------------
phase "the real unit under systemd (systemd-nspawn --boot)"
# The chroot cannot show the unit's sandbox at work; a booted Debian 12 can. The same root gets systemd,
# the package again (enabled, not started: nothing runs yet), and a probe unit that checks the running
# service from inside, writes /root/systemd-test.result and powers the container off.
boot_stage() {
    if ! command -v systemd-nspawn >/dev/null; then
        say "   installing systemd-container from Debian"
        apt-get install -y -qq systemd-container >/dev/null 2>&1 || return 1
    fi
    in_root apt-get install -y systemd systemd-sysv dbus "/tmp/$(basename "$DEB")" >"$WORK/apt-systemd.log" 2>&1 \
        || { tail -15 "$WORK/apt-systemd.log"; return 1; }
    cp "$DEB" "$ROOT/root/autlearn.deb"
    cat >"$ROOT/root/systemd_probe.sh" <<'EOF'
#!/bin/sh
R=/root/systemd-test.result
: >"$R"
pass() { echo "PASS  systemd: $1" >>"$R"; }
fail() { echo "FAIL  systemd: $1${2:+ — $2}" >>"$R"; }
t() { name=$1; shift; if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(echo "$out" | tail -2 | tr '\n' ' ')"; fi; }
active() { [ "$(systemctl show -P SubState autlearnd)" = running ]; }
T0=$(date +%s)
t "autlearnd.service enabled and running after boot (Type=notify: READY=1 arrived)" \
    sh -c "[ \"\$(systemctl is-enabled autlearnd)\" = enabled ] && for i in \$(seq 60); do [ \"\$(systemctl show -P SubState autlearnd)\" = running ] && exit 0; sleep 0.5; done; exit 1"
PID=$(systemctl show -P MainPID autlearnd)
t "sandboxed: user autlearn, own network namespace, seccomp, no new privileges, no capabilities" sh -c "
    [ \"\$(stat -c %U /proc/$PID)\" = autlearn ] && [ \"\$(readlink /proc/$PID/ns/net)\" != \"\$(readlink /proc/1/ns/net)\" ] &&
    grep -q '^Seccomp:[[:space:]]*2' /proc/$PID/status && grep -q '^NoNewPrivs:[[:space:]]*1' /proc/$PID/status &&
    grep -q '^CapBnd:[[:space:]]*0000000000000000' /proc/$PID/status"
t "autlearnctl status (root)" autlearnctl status
python3 /root/make_digits.py
round=""
for _ in $(seq 120); do
    round=$(autlearnctl --json status 2>/dev/null | python3 /root/last_round.py)
    [ -n "$round" ] && break
    sleep 0.5
done
if [ -n "$round" ]; then pass "a training round inside the sandbox: $round"; else fail "a training round inside the sandbox"; fi
t "systemctl reload (SIGHUP) keeps it running" sh -c 'systemctl reload autlearnd && sleep 1 && [ "$(systemctl show -P SubState autlearnd)" = running ]'
# WatchdogSec=30s: still the same process, never restarted, well past one watchdog interval.
while [ $(( $(date +%s) - T0 )) -lt 36 ]; do sleep 1; done
t "watchdog fed for 36 s (WatchdogSec=30s): same process, no restart" \
    sh -c "[ \"\$(systemctl show -P MainPID autlearnd)\" = $PID ] && [ \"\$(systemctl show -P NRestarts autlearnd)\" = 0 ] && [ \"\$(systemctl show -P SubState autlearnd)\" = running ]"
journalctl -b -u autlearnd --no-pager -o cat >/root/autlearnd.journal 2>&1
# (systemd's own "Failed to configure loopback network device" comes from nspawn's missing CAP_NET_ADMIN.)
t "journal: no sandbox denials (EPERM, SIGSYS, read-only file system), no crash" \
    sh -c '! grep -v "loopback network device" /root/autlearnd.journal | grep -Ei "operation not permitted|bad system call|read-only file system|permission denied|code=killed|code=dumped"'
t "dpkg -r autlearn stops the service" sh -c 'dpkg -r autlearn >/dev/null && ! systemctl is-active -q autlearnd'
t "dpkg -i autlearn.deb (re)starts the service" sh -c 'dpkg -i /root/autlearn.deb >/dev/null && for i in $(seq 60); do [ "$(systemctl show -P SubState autlearnd)" = running ] && exit 0; sleep 0.5; done; exit 1'
t "dpkg --purge stops it and removes state, cache and user" sh -c 'dpkg --purge autlearn >/dev/null && ! systemctl is-active -q autlearnd && ! [ -e /var/lib/autlearn ] && ! [ -e /var/cache/autlearn ] && ! getent passwd autlearn'
echo "DONE" >>"$R"
EOF
    cat >"$ROOT/etc/systemd/system/debtest-probe.service" <<'EOF'
[Unit]
Description=deb-test probe of autlearnd.service
After=autlearnd.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c '/bin/sh /root/systemd_probe.sh; /bin/systemctl poweroff --no-block'
TimeoutStartSec=5min
[Install]
WantedBy=multi-user.target
EOF
    ln -sf /etc/systemd/system/debtest-probe.service "$ROOT/etc/systemd/system/multi-user.target.wants/debtest-probe.service"
    # Waits scaled like the chroot stage's (emulation); the watchdog check stays at WatchdogSec's 36 s.
    sed -i -e "s/seq 60)/seq \$((60 * $SLOW)))/g" -e "s/seq 120)/seq \$((120 * $SLOW)))/g" "$ROOT/root/systemd_probe.sh"
    sed -i "s/TimeoutStartSec=5min/TimeoutStartSec=$((5 * SLOW))min/" "$ROOT/etc/systemd/system/debtest-probe.service"
    rm -f "$ROOT/etc/resolv.conf" "$ROOT/root/systemd-test.result"
    for m in var/cache/apt/archives run dev sys/devices/system/cpu sys proc; do umount -l "$ROOT/$m" 2>/dev/null || true; done
    # systemd writes to a console: script(1) gives nspawn a terminal; the boot log goes to a file.
    local limit=300
    [ "$ARCH" = "$HOST_ARCH" ] || limit=${DEB_TEST_BOOT_LIMIT:-900}
    local hide=""  # the host's CPU topology hidden from LiteRT under emulation, as in the chroot stage
    [ "$ARCH" = "$HOST_ARCH" ] || hide="--tmpfs=/sys/devices/system/cpu"
    timeout -k 10 "$limit" script -qec "systemd-nspawn -q -D '$ROOT' --boot --register=no --keep-unit $hide" /dev/null \
        >"$WORK/boot-$ARCH.log" 2>&1 </dev/null || true
    [ -f "$ROOT/root/systemd-test.result" ] || { tr -d '\r' <"$WORK/boot-$ARCH.log" | tail -20; return 2; }
    cp "$ROOT/root/autlearnd.journal" "$WORK/autlearnd.journal" 2>/dev/null || true
    return 0
}
if [ "${DEB_TEST_SYSTEMD:-1}" = 0 ]; then
    say "   skipped (DEB_TEST_SYSTEMD=0)"
else
    t=$(date +%s)
    rc=0; boot_stage || rc=$?
    if [ "$rc" -eq 0 ]; then
        while IFS= read -r line; do
            case "$line" in
                PASS*) ok "${line#PASS  }" ;;
                FAIL*) bad "${line#FAIL  }" ;;
            esac
        done <"$ROOT/root/systemd-test.result"
        grep -q '^DONE' "$ROOT/root/systemd-test.result" || bad "systemd probe finished" "see $WORK/boot.log"
        say "   booted, probed and powered off in $(( $(date +%s) - t ))s (boot log: $WORK/boot-$ARCH.log)"
    elif [ "$rc" -eq 2 ] && [ "$ARCH" != "$HOST_ARCH" ]; then
        # systemd as PID 1 under qemu-user: what did not work is in the boot log (quoted in the summary).
        why=$(tr -d '\r' <"$WORK/boot-$ARCH.log" | grep -v '^\s*$' | tail -3 | tr '\n' ' ' | cut -c1-300)
        skip "the real unit under systemd: the $ARCH root did not boot under emulation within $(( $(date +%s) - t ))s" \
            "${why:-no output} (the unit and its sandbox are proven by the $HOST_ARCH deb-test; $WORK/boot-$ARCH.log)"
    else
        bad "boot the root with systemd-nspawn" "see $WORK/boot-$ARCH.log (DEB_TEST_SYSTEMD=0 skips this stage)"
    fi
fi

summary
[ "$FAILED" -eq 0 ]
