#!/usr/bin/env bash
# The root filesystem of Herald's image, which starts FROM scratch: the given binaries,
# stripped, plus exactly the shared libraries they load (found with ldd), bash for the
# compose healthchecks (which use only its builtins), and the few /etc files glibc and a
# non-root user need. Both image recipes use it: docker/Dockerfile inside its Rust builder
# stage, `just images-offline` on the host for docker/Dockerfile.prebuilt.
#
#   docker/rootfs.sh <rootfs-dir> <symbols-dir> <binary>...
#
# Each binary's debug information (line tables) goes to <symbols-dir>/<name>.debug, and
# the stripped binary carries a debug link to it, so gdb or addr2line given that directory
# still resolve addresses to source lines; the image itself holds no debug information.
set -euo pipefail

if (($# < 3)); then
    echo "usage: $0 <rootfs-dir> <symbols-dir> <binary>..." >&2
    exit 64
fi
root=$1
symbols=$2
shift 2
for tool in objcopy ldd bash; do
    command -v "$tool" >/dev/null || { echo "rootfs: needs $tool (binutils, libc-bin)" >&2; exit 1; }
done
mkdir -p "$root"/usr/local/bin "$root"/bin "$root"/etc "$root"/tmp "$symbols"
chmod 1777 "$root"/tmp

for bin in "$@"; do
    name=$(basename "$bin")
    objcopy --only-keep-debug "$bin" "$symbols/$name.debug"
    objcopy --strip-all --add-gnu-debuglink="$symbols/$name.debug" "$bin" "$root/usr/local/bin/$name"
done
bash_path=$(command -v bash)
cp "$bash_path" "$root/bin/bash"

# Every shared object the binaries and bash load, at the path the loader looks for it
# (the program interpreter, e.g. /lib64/ld-linux-x86-64.so.2, included): ldd prints
# "name => /path (addr)" or "/path (addr)", and "<file>:" before each file's list.
libs=$(ldd "$root"/usr/local/bin/* "$root/bin/bash" 2>/dev/null \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' | sort -u)
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

# The unprivileged user the image runs as (uid/gid 10001, fixed so that volumes and
# Kubernetes securityContexts can name it), and name lookup from /etc/hosts, then DNS.
printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
    'herald:x:10001:10001:herald:/nonexistent:/usr/sbin/nologin' > "$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'herald:x:10001:' > "$root/etc/group"
printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' > "$root/etc/nsswitch.conf"
