# OpenBao in production: one node, integrated (raft) storage in the openbao-data volume.
# The listener is plain HTTP on the platform network only (no published port): the secret
# store is never reached from outside the host, nor by tenants. It starts sealed; unseal it
# after every start (docs/runbooks/install.md, "Unseal").
ui = false
disable_mlock = true

storage "raft" {
  path    = "/openbao/file"
  node_id = "rp9-openbao-1"
}

listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}

api_addr     = "http://openbao:8200"
cluster_addr = "http://openbao:8201"
