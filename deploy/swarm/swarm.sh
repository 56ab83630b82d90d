#!/usr/bin/env bash
# A Docker Swarm on this one machine, its nodes Docker-in-Docker containers of the host's engine
# (rp9/swarm-node, deploy/images/swarm-node): m1 is a manager only (drained, so draining or losing
# a worker never touches the quorum); w1 and w2 carry region=eu-1, w3 region=us-1, and every
# worker rp9.tenants=true. They sit on the host bridge rp9-swarm, 10.96.0.0/24, where the host is
# 10.96.0.1 (outside the tenants' 10.88.0.0/14).
#
#   swarm.sh up               build the node image, start the nodes, form the swarm (idempotent)
#   swarm.sh down [--purge]   remove the nodes and the network; --purge also the nodes' state
#   swarm.sh status           one line per node
#   swarm.sh env              the Swarm runtime's environment (SWARM_MANAGER_HOST, ...)
#   swarm.sh images IMAGE...  copy images from the host's engine to the workers lacking them
#                             (no registry: docker save | docker load); a bare V is rp9/n8n:V
#   swarm.sh verify           check what the Swarm runtime relies on, with figures (README.md)
#
# Each node's engine state (/var/lib/docker, a bind mount of the host's ext4) and its API socket
# live in RP9_SWARM_DIR/<node> (default /var/lib/rp9/swarm): the host reaches a node's engine at
# unix://RP9_SWARM_DIR/<node>/run/docker.sock, and a node started again on its state rejoins by
# itself, so `down` then `up` keeps the swarm and the workers' images.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${RP9_SWARM_DIR:-/var/lib/rp9/swarm}
network=rp9-swarm
subnet=10.96.0.0/24
host_ip=10.96.0.1
# Overlay networks get a /26 each (up to 61 tasks) out of this pool: outside the tenants'
# 10.88.0.0/14, the nodes' 10.96.0.0/24 and the nodes' own bridges' 10.97.0.0/16 (daemon.json).
overlay_pool=10.98.0.0/15
overlay_mask=26
nodes=(m1 w1 w2 w3)
workers=(w1 w2 w3)
declare -A node_ip=([m1]=10.96.0.10 [w1]=10.96.0.11 [w2]=10.96.0.12 [w3]=10.96.0.13)
declare -A node_labels=([m1]="" [w1]="region=eu-1 rp9.tenants=true"
  [w2]="region=eu-1 rp9.tenants=true" [w3]="region=us-1 rp9.tenants=true")
n8n_repo=${N8N_IMAGE:-rp9/n8n}

log() { printf '[swarm] %s\n' "$*"; }
die() { printf '[swarm] error: %s\n' "$*" >&2; exit 1; }

# wait_for NAME SECONDS COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_for() {
  local name=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$name: not ready after $2 s"
    sleep 0.3
  done
}

sock() { echo "$dir/$1/run/docker.sock"; }
# Where tasks reach the platform's Postgres and Redis: the host's docker0 address, where they
# listen (stack.sh), routed to the host through the nodes' gateway 10.96.0.1.
services_ip() { ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1; }
pg_port=55432
redis_port=56379
# What tasks may reach on the nodes' network (rp9-node's firewall): Postgres and Redis, no more.
allowance() { echo "$(services_ip):$pg_port,$(services_ip):$redis_port"; }
# on NODE ARGS...: the docker CLI against NODE's engine.
on() {
  local node=$1
  shift
  docker -H "unix://$(sock "$node")" "$@"
}
swarm_state() { on "$1" info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null; }
node_id() { on "$1" info -f '{{.Swarm.NodeID}}'; }

# remove_older REPOSITORY IMAGE: the host's images of REPOSITORY but IMAGE (older recipes).
remove_older() {
  docker images "$1" --format '{{.Repository}}:{{.Tag}}' | grep -vxF "$2" \
    | xargs -r docker image rm >/dev/null 2>&1 || true
}

lock() {
  mkdir -p "$dir"
  exec 8>"$dir/.lock"
  flock 8
}

ensure_network() {
  local have
  if have=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$network" 2>/dev/null); then
    [ "$have" = "$subnet" ] || die "network $network has subnet $have, not $subnet: \`swarm.sh down\` first"
    return 0
  fi
  log "creating the bridge $network ($subnet; the host is $host_ip)"
  docker network create -d bridge --subnet "$subnet" --gateway "$host_ip" \
    -o com.docker.network.bridge.name=rp9swarm0 --label io.rp9.swarm=true "$network" >/dev/null
}

# ensure_node NODE IMAGE: NODE's container runs IMAGE with today's firewall allowance (a new
# image or allowance recreates it on its state).
ensure_node() {
  local node=$1 image=$2 name=rp9-swarm-$1 have allow
  allow=$(allowance)
  have=$(docker inspect -f '{{.State.Status}} {{.Config.Image}} {{index .Config.Labels "io.rp9.swarm.allow"}}' "$name" 2>/dev/null || true)
  if [ -n "$have" ]; then
    if [ "${have#* }" != "$image $allow" ]; then
      log "recreating $node on $image, tasks allowed to $allow (its state is kept)"
      docker stop -t 30 "$name" >/dev/null
      docker rm "$name" >/dev/null
    elif [ "${have%% *}" = running ]; then
      return 0
    else
      log "starting $node"
      docker start "$name" >/dev/null
      return 0
    fi
  fi
  mkdir -p "$dir/$node/docker" "$dir/$node/run"
  log "starting $node on ${node_ip[$node]}"
  # What --privileged gives a nested engine, but CAP_SYS_RESOURCE: this machine's engine runs
  # without it in its bounding set, and runc then refuses a privileged container ("unable to
  # apply caps"). rp9-node remounts /sys and the cgroups read-write. A private cgroup namespace
  # nests the tasks' cgroups under the node's own.
  docker run -d --name "$name" --hostname "$node" \
    --label io.rp9.swarm=true --label "io.rp9.swarm.node=$node" \
    --label "io.rp9.swarm.allow=$allow" -e "RP9_NODE_ALLOW=$allow" \
    --cap-add ALL --cap-drop SYS_RESOURCE --device-cgroup-rule 'a *:* rwm' \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt systempaths=unconfined --cgroupns private --restart unless-stopped \
    --log-opt max-size=10m --log-opt max-file=2 \
    --network "$network" --ip "${node_ip[$node]}" \
    -v "$dir/$node/docker:/var/lib/docker" -v "$dir/$node/run:/run/rp9" \
    "$image" >/dev/null
}

# settled NODE: the node's swarm state is final (a restarted node is `pending` while it
# reconnects to the manager).
settled() { [[ $(swarm_state "$1") =~ ^(active|inactive|error|locked)$ ]]; }

init_manager() {
  wait_for "m1 swarm state" 30 settled m1
  case $(swarm_state m1) in
    active) ;;
    inactive)
      log "swarm init on m1"
      # A 2 s heartbeat marks a lost node down in ~6 s (the default 5 s: ~15 s); ten tasks of
      # history are what the runtime reads restarts from.
      on m1 swarm init --advertise-addr "${node_ip[m1]}" --listen-addr "${node_ip[m1]}:2377" \
        --default-addr-pool "$overlay_pool" --default-addr-pool-mask-length "$overlay_mask" \
        --task-history-limit 10 --dispatcher-heartbeat 2s >/dev/null
      # The routing mesh needs IPVS, which this kernel lacks: services publish in host mode, and
      # without the ingress network a routing-mesh publish fails at once instead of never
      # routing.
      echo y | on m1 network rm ingress >/dev/null
      ;;
    *) die "m1's swarm is $(swarm_state m1): see \`docker logs rp9-swarm-m1\` (or \`swarm.sh down --purge\`)" ;;
  esac
  [ "$(on m1 info -f '{{.Swarm.ControlAvailable}}')" = true ] || die "m1 is not a manager"
}

join_workers() {
  local node token="" state id
  for node in "${workers[@]}"; do
    wait_for "$node swarm state" 30 settled "$node"
    state=$(swarm_state "$node")
    if [ "$state" = active ]; then
      id=$(node_id "$node")
      # Active in this swarm, or left over from one `down --purge` of m1 removed.
      on m1 node inspect "$id" >/dev/null 2>&1 && continue
      log "$node belongs to another swarm: leaving it"
    fi
    [ "$state" = inactive ] || on "$node" swarm leave --force >/dev/null
    [ -n "$token" ] || token=$(on m1 swarm join-token -q worker)
    log "joining $node"
    on "$node" swarm join --token "$token" --advertise-addr "${node_ip[$node]}" \
      --listen-addr "${node_ip[$node]}:2377" "${node_ip[m1]}:2377" >/dev/null
  done
}

# Entries of earlier joins of our nodes (down, with another id than the node's current one).
remove_stale_nodes() {
  local current="" node id host status
  for node in "${nodes[@]}"; do current+=" $(node_id "$node")"; done
  while read -r id host status; do
    [[ " ${nodes[*]} " == *" $host "* && " $current " != *" $id "* && $status == Down ]] || continue
    log "removing $host's stale node entry $id"
    on m1 node rm --force "$id" >/dev/null
  done < <(on m1 node ls --format '{{.ID}} {{.Hostname}} {{.Status}}')
}

# The nodes' labels, and m1's availability. A worker's availability is left alone (a joining
# node is active): `up` must not undo a drain someone is testing.
shape_nodes() {
  local node id have args label
  for node in "${nodes[@]}"; do
    id=$(node_id "$node")
    # shellcheck disable=SC2016  # a Go template
    have=" $(on m1 node inspect -f '{{range $k, $v := .Spec.Labels}}{{$k}}={{$v}} {{end}}{{.Spec.Availability}}' "$id") "
    args=()
    if [ "$node" = m1 ] && [[ $have != *" drain "* ]]; then args+=(--availability drain); fi
    for label in ${node_labels[$node]}; do
      [[ $have == *" $label "* ]] || args+=(--label-add "$label")
    done
    ((${#args[@]} == 0)) && continue
    log "node $node: ${args[*]}"
    on m1 node update "${args[@]}" "$id" >/dev/null
  done
}

all_ready() {
  [ "$(on m1 node ls --format '{{.Hostname}} {{.Status}}' | grep -c ' Ready$')" -ge "${#nodes[@]}" ]
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root"
  docker info >/dev/null 2>&1 || die "the host's Docker engine does not answer"
  local started=$SECONDS image node
  lock
  image=$(bash "$root/deploy/images/swarm-node/build.sh")
  ensure_network
  for node in "${nodes[@]}"; do ensure_node "$node" "$image"; done
  remove_older "${image%:*}" "$image"
  for node in "${nodes[@]}"; do wait_for "$node's engine" 60 on "$node" version; done
  init_manager
  join_workers
  remove_stale_nodes
  shape_nodes
  wait_for "all nodes ready" 60 all_ready
  # The manager's task settings, in case the swarm was formed by an older recipe.
  if [ "$(on m1 info -f '{{.Swarm.Cluster.Spec.Orchestration.TaskHistoryRetentionLimit}} {{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}')" != "10 2s" ]; then
    on m1 swarm update --task-history-limit 10 --dispatcher-heartbeat 2s >/dev/null
  fi
  log "up in $((SECONDS - started)) s: ${nodes[*]} on $network; manager unix://$(sock m1)"
}

down() {
  local purge=false node name
  [ "${1:-}" = --purge ] && purge=true
  lock
  for node in "${nodes[@]}"; do
    name=rp9-swarm-$node
    docker inspect "$name" >/dev/null 2>&1 || continue
    log "removing $node"
    # The nested engine shuts its containers down and closes its stores cleanly first.
    docker stop -t 30 "$name" >/dev/null
    docker rm "$name" >/dev/null
  done
  if docker network inspect "$network" >/dev/null 2>&1; then
    log "removing the bridge $network"
    docker network rm "$network" >/dev/null
  fi
  if $purge; then
    log "removing the nodes' state in $dir"
    rm -rf "${dir:?}"/{m1,w1,w2,w3}
  fi
  log "down"
}

status() {
  local node name container swarm images
  docker network inspect "$network" >/dev/null 2>&1 || echo "network $network  missing"
  for node in "${nodes[@]}"; do
    name=rp9-swarm-$node
    container=$(docker inspect -f '{{.State.Status}}' "$name" 2>/dev/null || echo missing)
    swarm=- images=-
    if [ "$container" = running ] && on "$node" version >/dev/null 2>&1; then
      # shellcheck disable=SC2016  # a Go template
      swarm=$(on m1 node inspect -f '{{.Status.State}} {{.Spec.Availability}} {{range $k, $v := .Spec.Labels}}{{$k}}={{$v}} {{end}}' "$(node_id "$node")" 2>/dev/null || echo "not in the swarm")
      images=$(on "$node" image ls "$n8n_repo" --format '{{.Tag}}' | paste -sd, -)
    fi
    printf '%-3s %-11s %-8s %s n8n:[%s]\n' "$node" "${node_ip[$node]}" "$container" "$swarm" "$images"
  done
}

print_env() {
  cat <<ENV
SWARM_MANAGER_HOST=unix://$(sock m1)
SWARM_NODE_ENGINE=unix://$dir/{node}/run/docker.sock
SWARM_SERVICES_IP=$(services_ip)
S3_REGION_BUCKETS=eu-1=rp9-backups-eu-1,us-1=rp9-backups-us-1
ENV
}

# images REF...: each image of the host's engine onto every worker that lacks it, streamed once
# from `docker save` to all their `docker load`s at the same time.
images() {
  (($# > 0)) || die "usage: swarm.sh images IMAGE|N8N_VERSION..."
  lock
  local arg ref id node started tmp rc pid
  for arg in "$@"; do
    ref=$arg
    [[ $ref == *[:/]* ]] || ref=$n8n_repo:$arg
    id=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null) || die "the host's engine has no $ref"
    local targets=() pids=() fifos=()
    for node in "${workers[@]}"; do
      [ "$(on "$node" image inspect -f '{{.Id}}' "$ref" 2>/dev/null)" = "$id" ] || targets+=("$node")
    done
    if ((${#targets[@]} == 0)); then
      log "$ref: on every worker already"
      continue
    fi
    log "$ref ($(docker image inspect -f '{{.Size}}' "$ref" | numfmt --to=iec)): loading into ${targets[*]}"
    started=$SECONDS
    tmp=$(mktemp -d)
    for node in "${targets[@]}"; do
      mkfifo "$tmp/$node"
      on "$node" load -q <"$tmp/$node" >"$tmp/$node.log" 2>&1 &
      pids+=($!)
      fifos+=("$tmp/$node")
    done
    rc=0
    docker save "$ref" | tee "${fifos[@]:1}" >"${fifos[0]}" || rc=$?
    for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
    for node in "${targets[@]}"; do
      [ "$(on "$node" image inspect -f '{{.Id}}' "$ref" 2>/dev/null)" = "$id" ] \
        || { cat "$tmp/$node.log" >&2; rc=1; log "$ref: loading into $node failed"; }
    done
    rm -rf "$tmp"
    ((rc == 0)) || die "$ref: not loaded everywhere"
    log "$ref: on ${targets[*]} in $((SECONDS - started)) s"
  done
}

# The checks of `verify`: throwaway services, a network and a secret named rp9-swarm-check-*,
# labelled io.rp9.swarm.check=true and removed again at the end; other services are left alone.
check=rp9-swarm-check
check_label=io.rp9.swarm.check=true
check_port=18999
failures=0
drained=""

now() { date +%s.%N; }
# secs FROM [TO]: seconds from one `now` (or API timestamp, see epoch) to another, or to now.
secs() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.1f", b - a }'; }
epoch() { date -d "$1" +%s.%N; }
pass() { printf '[swarm] verify %-8s ok: %s\n' "$1" "$2"; }
fail() {
  printf '[swarm] verify %-8s FAILED: %s\n' "$1" "$2" >&2
  failures=$((failures + 1))
}

# check_service NAME ARGS...: a detached service of the checks (no registry lookup of its image).
check_service() {
  local name=$1
  shift
  on m1 service create -d -q --no-resolve-image --name "$check-$name" --label "$check_label" \
    --container-label "$check_label" "$@" >/dev/null
}
# task_of SERVICE: the id of SERVICE's task that should run.
task_of() { on m1 service ps -q --no-trunc --filter desired-state=running "$check-$1" | head -1; }
# running_task SERVICE SECONDS: wait until SERVICE's task runs, and print its id.
running_task() {
  local deadline=$((SECONDS + $2)) task
  while ((SECONDS < deadline)); do
    task=$(task_of "$1")
    if [ -n "$task" ] && [ "$(on m1 inspect -f '{{.Status.State}}' "$task")" = running ]; then
      echo "$task"
      return 0
    fi
    sleep 0.2
  done
  return 1
}
task_node() { on m1 node inspect -f '{{.Description.Hostname}}' "$(on m1 inspect -f '{{.NodeID}}' "$1")"; }
task_container() { on m1 inspect -f '{{.Status.ContainerStatus.ContainerID}}' "$1"; }
# in_task TASK COMMAND...: run COMMAND in TASK's container, through its node's engine.
in_task() {
  local task=$1
  shift
  on "$(task_node "$task")" exec "$(task_container "$task")" "$@"
}
# http_get TASK HOST PORT: the last line of GET / from TASK's container (busybox nc: the static
# busybox's wget crashes in a container).
http_get() {
  in_task "$1" sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $2 $3 | tail -n 1" 2>&1 || true
}
checks_gone() {
  local node
  for node in "${workers[@]}"; do
    [ -z "$(on "$node" ps -aq --filter "label=$check_label")" ] || return 1
  done
}

remove_checks() {
  local id node
  for id in $(on m1 service ls -q --filter "label=$check_label"); do on m1 service rm "$id" >/dev/null; done
  # An overlay can go once no task's container is attached to it on any node.
  wait_for "the checks' containers to go" 60 checks_gone
  for id in $(on m1 secret ls -q --filter "label=$check_label"); do on m1 secret rm "$id" >/dev/null; done
  if on m1 network inspect "$check" >/dev/null 2>&1; then
    wait_for "network $check removal" 30 on m1 network rm "$check"
  fi
  if [ -n "$drained" ]; then
    on m1 node update --availability active "$(node_id "$drained")" >/dev/null
    drained=""
  fi
}

verify_cluster() {
  local kernel nodes_ready
  kernel=$(zcat /proc/config.gz 2>/dev/null | grep -E '^(# )?CONFIG_IP_VS( |=)' || echo "CONFIG_IP_VS unknown")
  nodes_ready=$(on m1 node ls --format '{{.Hostname}}={{.Status}}/{{.Availability}}' | sort | paste -sd' ')
  if [ "$(on m1 node ls --format '{{.Status}}' | grep -c Ready)" -ge ${#nodes[@]} ]; then
    pass cluster "$nodes_ready ($kernel; ingress network $(on m1 network inspect ingress >/dev/null 2>&1 && echo present || echo removed))"
  else
    fail cluster "$nodes_ready"
  fi
}

# An overlay between two dnsrr services on w1 and w2: DNS answers and TCP connects across nodes
# (VXLAN, no IPVS). The client also checks the tasks' way to the host (10.96.0.1).
verify_overlay() {
  local started server client address own reply
  started=$(now)
  on m1 network create -d overlay --label "$check_label" "$check" >/dev/null
  check_service server --network "$check" --endpoint-mode dnsrr --constraint node.hostname==w1 \
    "$probe" httpd -f -p 8080 -h /www
  check_service client --network "$check" --endpoint-mode dnsrr --constraint node.hostname==w2 \
    --host "host.docker.internal:$host_ip" "$probe" sleep 3600
  server=$(running_task server 60) || { fail overlay "the server's task did not run"; return; }
  client=$(running_task client 60) || { fail overlay "the client's task did not run"; return; }
  pass overlay "network and two services created, both tasks running in $(secs "$started") s"
  address=$(in_task "$client" nslookup "$check-server" 2>/dev/null | awk '/^Address/ { a = $NF } END { print a }' || true)
  own=$(on m1 inspect -f '{{range .NetworksAttachments}}{{range .Addresses}}{{.}}{{end}}{{end}}' "$server")
  reply=$(http_get "$client" "$check-server" 8080)
  if [ "$reply" = ok ] && [ -n "$address" ] && [ "$address" = "${own%/*}" ]; then
    pass overlay "w2 → w1: $check-server resolves to $address (the task's own address: dnsrr), GET answers"
  else
    fail overlay "w2 → w1: $check-server resolved to '${address}', HTTP said '$reply'"
  fi
  # Each node attached to an overlay holds its load-balancer endpoint (<network>-endpoint) even
  # with dnsrr alone; it takes one address of the network per node.
  address=$(on w1 network inspect -f "{{range .Containers}}{{if eq .Name \"$check-endpoint\"}}{{.IPv4Address}}{{end}}{{end}}" "$check")
  pass overlay "w1's load-balancer endpoint $check-endpoint: ${address:-none}"
}

# A task reaches the host's Postgres at SWARM_SERVICES_IP, and nothing else of the host's: a
# server listening there on another port is refused by the host's firewall (stack.sh applies
# deploy/local/firewall.sh to the nodes' subnet as to the tenants' pool).
verify_host() {
  local client www pid ip pg reached
  client=$(task_of client)
  [ -n "$client" ] || { fail host "no client task (the overlay check failed)"; return; }
  ip=$(services_ip)
  pg=$(in_task "$client" sh -c "nc -z -w 5 $ip $pg_port && echo open || echo closed" 2>&1 || true)
  www=$(mktemp -d)
  (cd "$www" && exec python3 -m http.server --bind "$ip" "$check_port") >/dev/null 2>&1 &
  pid=$!
  wait_for "the host's test server" 10 curl -fsS "http://$ip:$check_port/"
  reached=$(in_task "$client" sh -c "nc -z -w 5 $ip $check_port && echo open || echo closed" 2>&1 || true)
  kill "$pid"
  rm -rf "$www"
  if [ "$pg" = open ] && [ "$reached" = closed ]; then
    pass host "a task on w2 reached Postgres at $ip:$pg_port and was refused $ip:$check_port"
  else
    fail host "a task on w2: Postgres at $ip:$pg_port $pg, another port $ip:$check_port $reached (want open, closed)"
  fi
}

# A port published in host mode with no published port: the node picks one and the host reaches
# it on the node's address. The health check passes 10 s after the start, to see what the port
# and the task's Status.PortStatus do before.
verify_port() {
  local started deadline=$((SECONDS + 60)) task state port cid node_port answered="" listed="" running="" t
  started=$(now)
  check_service port --constraint node.hostname==w1 --publish mode=host,target=8080 \
    --health-cmd 'test -f /tmp/healthy' --health-interval 1s --health-start-period 60s \
    "$probe" sh -c '(sleep 10; touch /tmp/healthy) & exec httpd -f -p 8080 -h /www'
  while [ -z "$running" ] && ((SECONDS < deadline)); do
    task=$(task_of port)
    sleep 0.2
    [ -n "$task" ] || continue
    read -r state port < <(on m1 inspect -f '{{.Status.State}} {{range .Status.PortStatus.Ports}}{{.PublishedPort}}{{end}}' "$task")
    t=$(secs "$started")
    if [ -z "$answered" ]; then
      # The node's engine knows the port as soon as the container started.
      cid=$(on w1 ps -q --filter "label=com.docker.swarm.task.id=$task")
      node_port=""
      if [ -n "$cid" ]; then node_port=$(on w1 port "$cid" 8080/tcp 2>/dev/null | head -1 | cut -d: -f2); fi
      if [ -n "$node_port" ] && curl -fsS -m 1 "http://${node_ip[w1]}:$node_port/" >/dev/null 2>&1; then
        answered="$t s ($state)"
      fi
    fi
    if [ -n "$port" ] && [ -z "$listed" ]; then listed="$t s ($state)"; fi
    if [ "$state" = running ]; then running="$t s"; fi
  done
  if [ -n "$running" ] && [ -n "$answered" ] && [ "$port" = "$node_port" ]; then
    pass port "w1 published 8080 on ${node_ip[w1]}:$port; the host's GET answered at $answered, port read from w1's container inspect; Status.PortStatus first at $listed; running (= healthy) at $running"
  else
    fail port "the host's GET: '$answered' (port $node_port), PortStatus: '$listed' (port $port), running: '$running'"
  fi
}

# A Swarm secret at /run/secrets/<file>, owned by uid 1000 with mode 0400; the tasks' CapDrop
# and pids limit reach the container.
verify_secret() {
  local value task got
  value=check-$RANDOM$RANDOM
  printf %s "$value" | on m1 secret create --label "$check_label" "$check-secret" - >/dev/null
  check_service secret --constraint node.labels.rp9.tenants==true --user 1000:1000 --cap-drop ALL \
    --limit-pids 64 --secret "source=$check-secret,target=db_password,uid=1000,gid=1000,mode=0400" \
    "$probe" sleep 3600
  task=$(running_task secret 60) || { fail secret "the task did not run"; return; }
  got=$(in_task "$task" sh -c 'stat -c "%u:%g %a" /run/secrets/db_password; cat /run/secrets/db_password' || true)
  if [ "$got" = "1000:1000 400
$value" ]; then
    pass secret "/run/secrets/db_password is 1000:1000 0400 and readable by uid 1000"
  else
    fail secret "got '$got'"
  fi
  got=$(on "$(task_node "$task")" inspect -f '{{.HostConfig.CapDrop}} pids={{.HostConfig.PidsLimit}}' "$(task_container "$task")")
  if [ "$got" = "[ALL] pids=64" ]; then
    pass secret "the container has CapDrop [ALL] and PidsLimit 64"
  else
    fail secret "the container has $got"
  fi
}

# Draining the node of a one-replica service moves it to the other eu-1 worker, and the old task
# has stopped before the new one starts (it takes ~3 s to stop on SIGTERM).
verify_drain() {
  local task from to started new old_end new_start
  check_service drain --constraint node.labels.region==eu-1 --stop-grace-period 10s \
    "$probe" sh -c 'trap "sleep 3; exit 0" TERM; while :; do sleep 1; done'
  task=$(running_task drain 60) || { fail drain "the task did not run"; return; }
  from=$(task_node "$task")
  started=$(now)
  drained=$from
  on m1 node update --availability drain "$(node_id "$from")" >/dev/null
  new=""
  while [ -z "$new" ] && (($(secs "$started" | cut -d. -f1) < 60)); do
    new=$(running_task drain 1 || true)
    [ "$new" = "$task" ] && new=""
  done
  [ -n "$new" ] || { fail drain "no new task within 60 s of draining $from"; return; }
  to=$(task_node "$new")
  pass drain "$from drained: the task runs on $to $(secs "$started") s later"
  old_end=$(epoch "$(on "$from" inspect -f '{{.State.FinishedAt}}' "$(task_container "$task")")")
  new_start=$(epoch "$(on "$to" inspect -f '{{.State.StartedAt}}' "$(task_container "$new")")")
  if awk -v a="$old_end" -v b="$new_start" 'BEGIN { exit !(b > a) }'; then
    pass drain "stop-first: the old container exited $(secs "$started" "$old_end") s after the drain (~3 s of it its SIGTERM handler), the new one started $(secs "$old_end" "$new_start") s after that"
  else
    fail drain "the new container started $(secs "$new_start" "$old_end") s before the old one exited"
  fi
  on m1 node update --availability active "$(node_id "$from")" >/dev/null
  drained=""
}

# The n8n image (when `swarm.sh images` loaded it) boots as a task on w1 and the host reaches it.
verify_n8n() {
  local version=${N8N_VERSION:-2.20.12} started task port
  if [ -z "$(on w1 image ls -q "$n8n_repo:$version")" ]; then
    pass n8n "skipped: w1 has no $n8n_repo:$version (swarm.sh images $version)"
    return
  fi
  started=$(now)
  check_service n8n --constraint node.hostname==w1 --publish mode=host,target=5678 \
    --limit-memory 1g --limit-cpu 1 \
    --health-cmd 'wget -qO- http://127.0.0.1:5678/healthz' --health-interval 2s \
    --health-start-period 120s \
    "$n8n_repo:$version"
  task=$(running_task n8n 120) || { fail n8n "the task did not become healthy in 120 s"; return; }
  port=$(on m1 inspect -f '{{range .Status.PortStatus.Ports}}{{.PublishedPort}}{{end}}' "$task")
  if curl -fsS -m 5 "http://${node_ip[w1]}:$port/healthz" >/dev/null; then
    pass n8n "$n8n_repo:$version healthy on w1 $(secs "$started") s after service create; the host's GET http://${node_ip[w1]}:$port/healthz answers"
  else
    fail n8n "the host's GET http://${node_ip[w1]}:$port/healthz failed"
  fi
}

verify() {
  [ "$(on m1 info -f '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] || die "no swarm: swarm.sh up first"
  local started=$SECONDS
  probe=$(bash "$root/deploy/images/swarm-node/build.sh" probe)
  remove_older "${probe%:*}" "$probe"
  images "$probe"
  remove_checks
  trap remove_checks EXIT
  verify_cluster
  verify_overlay
  verify_host
  verify_port
  verify_secret
  verify_drain
  verify_n8n
  log "verify: $failures failed, in $((SECONDS - started)) s"
  ((failures == 0))
}

case "${1:-}" in
  up) up ;;
  down) shift && down "$@" ;;
  status) status ;;
  env) print_env ;;
  images) shift && images "$@" ;;
  verify) verify ;;
  *) die "usage: $0 up|down [--purge]|status|env|images IMAGE...|verify" ;;
esac
