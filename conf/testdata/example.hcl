# metrolun configuration: one data site of a two-site cluster.
# Every key is shown; the values that differ from the defaults are marked.

name = "site-a"
role = "data"
data_dir = "/var/lib/metrolun"
log_level = "debug" # not the default
log_format = "json" # not the default

iscsi {
  # port 3260 is added to an entry that has none
  listen = ["192.0.2.10:3260", "[2001:db8::10]", "portal-a.example.net:3261"]
  portal_group = 2
  nop_interval = 10
  nop_timeout = 60
  max_recv_data_segment_length = 65536
  max_burst_length = 524288
  first_burst_length = 65536
  max_outstanding_r2t = 4
  immediate_data = false
  initial_r2t = true
  header_digest = ["CRC32C", "None"]
  data_digest = ["None"]
  queue_depth = 64
  max_connections = 512
  max_connections_per_ip = 32

  discovery_chap {
    username = "discovery"
    secret = "discovery-secret-1"
  }
}

target "iqn.2026-11.io.metrolun:demo" {
  alias = "demo"
  allow_initiators = [
    "iqn.1994-05.com.redhat:abc",
    "iqn.1991-05.com.microsoft:host-b",
  ]

  chap {
    username = "user"
    secret = "12-to-16-byte-secret"
    mutual_username = "tgt"
    mutual_secret = "another-secret-here"
  }

  lun "0" {
    path = "/var/lib/metrolun/demo.img"
    size = "1GiB"
    block_size = 512
    read_only = false
    serial = "MLDEMO0001"
    product = "metrolun"
    thin = true
    write_cache = true
  }

  lun "1" {
    path = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"
    block_size = 4096
    read_only = true
    thin = false
    write_cache = false
  }
}

target "iqn.2026-11.io.metrolun:scratch" {
  lun "0" {
    path = "/var/lib/metrolun/scratch.img"
    size = 268435456
  }
}
