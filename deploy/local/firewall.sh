#!/usr/bin/env bash
# The tenant boundary on the host's firewall: a tenant's containers reach the host only on the
# ports of the services they use (Postgres and Redis), whatever else listens on the host's
# addresses (the API, Dagster, Vault, S3, Prometheus, Traefik, the Docker API, anything bound to
# 0.0.0.0), and never the link-local range (a cloud's metadata service).
#
#   firewall.sh apply POOLS PORT...  tenants' addresses (CIDRs, comma-separated: the tenants'
#                                    networks, a Swarm's nodes) and the host ports they may use
#   firewall.sh remove               take the rules out again
#   firewall.sh show                 print the rules
#
# Idempotent: `apply` replaces the contents of its own chains in one iptables-restore
# transaction (no moment without rules) and keeps exactly one jump to each. The rules live in
# the kernel only: run `apply` after every boot (stack.sh up does).
#
# Traffic between tenants' networks is Docker's: each network is its own bridge, and Docker's
# DOCKER-ISOLATION chains drop what goes from one to another. Tenant networks carry no IPv6
# (Docker's default; the containers' IPv6 is disabled), so only iptables is needed.
set -euo pipefail

input_chain=RP9-TENANT-INPUT
forward_chain=RP9-TENANT-FORWARD
# A platform DR drill's scratch networks (bridges named rp9dr*, rp9_pipelines/resources/scratch.py)
# reach nothing on the host: the scratch platform has no route to the live one.
dr_chain=RP9-DR-INPUT

die() { printf '[firewall] error: %s\n' "$*" >&2; exit 1; }

# jump PARENT POOLS CHAIN: exactly one `-s POOL -j CHAIN` rule per pool of POOLS (comma-separated),
# first in PARENT; jumps from pools no longer listed are removed.
jump() {
  local parent=$1 pools=$2 chain=$3 rule pool kept
  while read -r rule; do
    [ -n "$rule" ] || continue
    kept=no
    for pool in ${pools//,/ }; do
      [[ $rule == *"-s $pool -j $chain"* ]] && kept=yes
    done
    # shellcheck disable=SC2086  # the rule's words, as iptables -S printed them
    [ $kept = yes ] || iptables ${rule/-A /-D }
  done < <(iptables -S "$parent" | grep -- "-j $chain\$" || true)
  for pool in ${pools//,/ }; do
    iptables -C "$parent" -s "$pool" -j "$chain" 2>/dev/null || iptables -I "$parent" 1 -s "$pool" -j "$chain"
  done
}

unjump() {
  local parent=$1 chain=$2 rule
  while read -r rule; do
    # shellcheck disable=SC2086
    [ -n "$rule" ] && iptables ${rule/-A /-D }
  done < <(iptables -S "$parent" 2>/dev/null | grep -- "-j $chain\$" || true)
}

apply() {
  local pool=${1:?usage: firewall.sh apply POOLS PORT...}
  shift
  (($# > 0)) || die "usage: firewall.sh apply POOLS PORT..."
  local ports
  ports=$(IFS=,; echo "$*")
  # Docker creates DOCKER-USER (and FORWARD's jump to it) when it starts; it keeps our rules.
  iptables -S DOCKER-USER >/dev/null 2>&1 || iptables -N DOCKER-USER
  # Declaring a chain in a --noflush restore creates it, or empties it when it exists.
  iptables-restore --noflush <<RULES
*filter
:$input_chain - [0:0]
:$forward_chain - [0:0]
-A $input_chain -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A $input_chain -p tcp -m multiport --dports $ports -j ACCEPT
-A $input_chain -p tcp -j REJECT --reject-with tcp-reset
-A $input_chain -j REJECT --reject-with icmp-admin-prohibited
-A $forward_chain -d 169.254.0.0/16 -j REJECT --reject-with icmp-admin-prohibited
-A $forward_chain -j RETURN
:$dr_chain - [0:0]
-A $dr_chain -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A $dr_chain -p tcp -j REJECT --reject-with tcp-reset
-A $dr_chain -j REJECT --reject-with icmp-admin-prohibited
COMMIT
RULES
  jump INPUT "$pool" "$input_chain"
  # First in INPUT, ahead of the tenants' jump (scratch networks are in the tenants' pool).
  local line
  while read -r line; do
    iptables -D INPUT "$line"
  done < <(iptables -L INPUT --line-numbers -n | awk -v c="$dr_chain" '$2==c {print $1}' | sort -rn)
  iptables -I INPUT 1 -i rp9dr+ -j "$dr_chain"
  jump DOCKER-USER "$pool" "$forward_chain"
  printf '[firewall] tenants in %s reach the host on tcp/%s only\n' "$pool" "$ports"
}

remove() {
  unjump INPUT "$input_chain"
  unjump DOCKER-USER "$forward_chain"
  unjump INPUT "$dr_chain"
  local chain
  for chain in "$input_chain" "$forward_chain" "$dr_chain"; do
    if iptables -S "$chain" >/dev/null 2>&1; then
      iptables -F "$chain"
      iptables -X "$chain"
    fi
  done
}

show() {
  iptables -S INPUT | grep -- "-j $input_chain\$" || true
  iptables -S DOCKER-USER 2>/dev/null | grep -- "-j $forward_chain\$" || true
  iptables -S "$input_chain" 2>/dev/null || echo "no $input_chain chain"
  iptables -S "$forward_chain" 2>/dev/null || echo "no $forward_chain chain"
}

[ "$(id -u)" = 0 ] || die "run as root (iptables)"
command -v iptables-restore >/dev/null || die "iptables is not installed"
case "${1:-}" in
  apply) shift && apply "$@" ;;
  remove) remove ;;
  show) show ;;
  *) die "usage: $0 apply POOLS PORT... | remove | show" ;;
esac
