#!/usr/bin/env bash
# Boot the appliance image interactively: serial console on this terminal
# (Ctrl-A X quits, Ctrl-A C switches to the QEMU monitor; system_powerdown
# there presses the ACPI power button). Disks persist in var/qemu; delete
# that directory to see the first boot setup again.
set -euo pipefail
cd "$(dirname "$0")/.."
IMG=${IMG:-out/image}
DIR=${DIR:-var/qemu}
VAULT_PORT=${VAULT_PORT:-7443}
METRICS_PORT=${METRICS_PORT:-9100}
mkdir -p "$DIR"
disk() { [ -e "$DIR/$1.img" ] || truncate -s "$2" "$DIR/$1.img"; }
disk system 64M; disk data1 1G; disk data2 1G; disk data3 1G
echo "vault on 127.0.0.1:$VAULT_PORT, metrics on http://127.0.0.1:$METRICS_PORT/metrics; Ctrl-A X quits"
exec qemu-system-x86_64 -accel tcg -m 1G -smp 2 -nodefaults -no-reboot -display none \
  -serial mon:stdio -qmp "unix:$DIR/qmp.sock,server=on,wait=off" \
  -kernel "$IMG/vmlinux" -initrd "$IMG/initramfs.cpio" -append "console=ttyS0 panic=-1 quiet ${APPEND:-}" \
  -drive "if=none,id=d0,file=$DIR/system.img,format=raw,cache=unsafe" -device virtio-blk-pci,drive=d0,serial=system \
  -drive "if=none,id=d1,file=$DIR/data1.img,format=raw,cache=unsafe" -device virtio-blk-pci,drive=d1,serial=data1 \
  -drive "if=none,id=d2,file=$DIR/data2.img,format=raw,cache=unsafe" -device virtio-blk-pci,drive=d2,serial=data2 \
  -drive "if=none,id=d3,file=$DIR/data3.img,format=raw,cache=unsafe" -device virtio-blk-pci,drive=d3,serial=data3 \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$VAULT_PORT-:7443,hostfwd=tcp:127.0.0.1:$METRICS_PORT-:9100" \
  -device virtio-net-pci,netdev=n0 -device virtio-rng-pci
