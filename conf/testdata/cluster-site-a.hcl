# metrolun configuration: site-a of two data sites and a witness.
# site-b's file is the same but for name, iscsi, target paths and the
# *_listen and tls lines; the witness's is testdata/cluster-witness.hcl.

name = "site-a"
data_dir = "/var/lib/metrolun"

iscsi {
  listen = ["0.0.0.0:3260"]
  # portal_group is left out: it comes from member "site-a" below.
}

target "iqn.2026-11.io.metrolun:demo" {
  lun "0" {
    path = "/var/lib/metrolun/demo.img"
    size = "1GiB"
  }
}

cluster {
  # Binds. Left out, each is this member's own address below.
  raft_listen = "0.0.0.0:7400"
  replication_listen = "[::]:7401"
  # admin_listen: from member "site-a"

  lease = "1500ms"
  election_timeout = 0.5 # seconds
  replica_timeout = "3s"
  resync_bandwidth = "100M"
  verify_bandwidth = "10MB/s"
  # Out-of-sync sites take logins themselves instead of redirecting them.
  redirect_logins = false
  quorum_loss = "pdl"

  tls {
    ca = "/etc/metrolun/ca.pem"
    cert = "/etc/metrolun/site-a.pem"
    key = "/etc/metrolun/site-a-key.pem"
  }

  member "site-a" {
    role = "data"
    raft = "192.0.2.10:7400"
    replication = "192.0.2.10:7401"
    admin = "192.0.2.10:7402"
    iscsi = ["192.0.2.10", "[2001:db8::10]:3260"]
  }
  member "site-b" {
    raft = "wan-proxy.example.net:17400" # through a proxy
    replication = "198.51.100.20:7401"
    admin = "198.51.100.20:7402"
    iscsi = ["198.51.100.20:3260"]
    portal_group = 7
  }
  member "witness" {
    role = "witness"
    raft = "203.0.113.30:7400"
  }

  prefer {
    initiator = "iqn.1994-05.com.redhat:host1"
    site = "site-a"
  }
  prefer {
    initiator = "iqn.1991-05.com.microsoft:host2"
    site = "site-b"
  }
}
