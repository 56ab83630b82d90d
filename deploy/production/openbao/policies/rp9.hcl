# The control plane's token (VAULT_TOKEN): tenants' secrets under secret/rp9/ (KV v2), and
# listing them for the platform's secrets snapshot. Nothing else.
path "secret/data/rp9/*" {
  capabilities = ["create", "read", "update", "delete"]
}

path "secret/metadata/rp9" {
  capabilities = ["list"]
}

path "secret/metadata/rp9/*" {
  capabilities = ["read", "list", "delete"]
}
