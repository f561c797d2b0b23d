# The witness of testdata/cluster-site-a.hcl: no iscsi, no target.
name = "witness"
role = "witness"
data_dir = "/var/lib/metrolun"

cluster {
  lease = "1500ms"
  election_timeout = "500ms"
  replica_timeout = 3
  admin_token_file = "/etc/metrolun/admin.token"

  tls {
    ca = "/etc/metrolun/ca.pem"
    cert = "/etc/metrolun/witness.pem"
    key = "/etc/metrolun/witness-key.pem"
  }

  member "site-a" {
    raft = "192.0.2.10:7400"
    replication = "192.0.2.10:7401"
    admin = "192.0.2.10:7402"
    iscsi = ["192.0.2.10:3260", "[2001:db8::10]:3260"]
  }
  member "site-b" {
    raft = "198.51.100.20:7400"
    replication = "198.51.100.20:7401"
    admin = "198.51.100.20:7402"
    iscsi = ["198.51.100.20:3260"]
    portal_group = 7
  }
  member "witness" {
    role = "witness"
    raft = "203.0.113.30:7400"
    admin = "203.0.113.30:7402"
  }
}
