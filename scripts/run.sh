#!/usr/bin/env bash
# make run: a vault and an agent on this machine, on embedded defaults.
# Protects DIR (first argument) or a sample tree it makes, prints what was
# stored and how to restore. State lives under ./var (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
VAR=$PWD/var
DATA=$VAR/vault
STATE=$VAR/agent
ADDR=${VAULT_ADDR:-127.0.0.1:7443}
PORTAL=${VAULT_PORTAL:-127.0.0.1:8443}
DIR=${1:-}
mkdir -p "$VAR"
# var/ may hold copies of Go sources (the sample tree): keep it out of ./...
[ -f "$VAR/go.mod" ] || printf 'module scratch/var\n' > "$VAR/go.mod"

if [ -z "$DIR" ]; then
  DIR=$VAR/sample
  if [ ! -d "$DIR" ]; then
    echo "making a sample tree in $DIR"
    mkdir -p "$DIR/docs/letters" "$DIR/src/app" "$DIR/media"
    for i in $(seq 1 200); do printf 'line %d of a note about the vault\n' $(seq 1 $((i % 50 + 1))) > "$DIR/docs/note-$i.txt"; done
    cp -r "$PWD/internal" "$DIR/src/app/" 2>/dev/null || true
    head -c 20000000 /dev/urandom > "$DIR/media/video.bin"
    truncate -s 1G "$DIR/media/disk.img"; printf 'boot sector' | dd of="$DIR/media/disk.img" conv=notrunc status=none
    ln -sf ../docs/note-1.txt "$DIR/src/readme-link"
  fi
fi
DIR=$(cd "$DIR" && pwd)

# vaultd's stdout (the portal's address and, on the first start, the first
# operator's one-time password) goes to a private file that is emptied once
# read: the password is shown here once and kept nowhere but as a hash.
OUT=$VAR/vaultd.out
(umask 077; : >"$OUT")
"$BIN/vaultd" -data "$DATA" -listen "$ADDR" -portal "$PORTAL" >>"$OUT" 2>"$VAR/vaultd.log" &
VPID=$!
stop() { kill "$VPID" 2>/dev/null; wait "$VPID" 2>/dev/null || true; : >"$OUT"; }
trap stop EXIT
for _ in $(seq 1 100); do grep -q "serving agents on" "$OUT" && break; sleep 0.1; done
grep -q "serving agents on" "$OUT" || { echo "vaultd did not start; see $VAR/vaultd.log"; cat "$VAR/vaultd.log"; exit 1; }
echo "vault running on $ADDR (data in $DATA, log in $VAR/vaultd.log)"
grep -E "portal on|one-time password" "$OUT" | sed 's/^vaultd: /  /' || true
: >"$OUT"

if [ ! -f "$STATE/identity.json" ]; then
  "$BIN/vaultctl" -data "$DATA" company list | grep -qx demo || "$BIN/vaultctl" -data "$DATA" company create demo
  TOKEN=$("$BIN/vaultctl" -data "$DATA" token create demo)
  "$BIN/vault-agent" -state "$STATE" enroll -vault "$ADDR" -token "$TOKEN"
fi
"$BIN/vault-agent" -state "$STATE" config set sample -path "$DIR"
"$BIN/vault-agent" -state "$STATE" backup sample
echo
"$BIN/vault-agent" -state "$STATE" versions sample
echo
"$BIN/vaultctl" -data "$DATA" computers
echo
"$BIN/vaultctl" -data "$DATA" verify
cat <<EOT

Stored. To look and restore while the vault runs:
  bin/vault-agent -state $STATE ls sample@latest
  bin/vault-agent -state $STATE restore sample@latest -to /tmp/restored
  bin/vault-agent -state $STATE restore sample@latest:$DIR/docs -to /tmp/restored --dry-run
  bin/vault-agent -state $STATE backup sample        # again: only changes are sent

The portal: https://$PORTAL/ (the vault's own certificate: your browser asks you to accept it).
Sign in as admin with the one-time password above (shown on the first start only; reset it with
  bin/vaultctl -data $DATA user passwd admin).
EOT
if [ -t 0 ]; then
  echo
  read -r -p "The vault keeps running until you press Enter. " _ || true
fi
