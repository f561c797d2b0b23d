# Shared by the install scripts (sourced, not run): find what is missing
# from a list of program:package pairs and install it with apt-get.
# The caller sets `needs` and `me` (its name, for messages).

have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# missing_packages prints the packages of the programs in $needs that
# are not installed, each once.
missing_packages() {
	out=""
	for pair in $needs; do
		prog=${pair%%:*}
		pkg=${pair#*:}
		if ! have "$prog"; then
			case " $out " in *" $pkg "*) ;; *) out="$out $pkg" ;; esac
		fi
	done
	echo "$out"
}

# apt_install PKG...: apt-get update and install (as root, or with sudo),
# quietly; the log is printed only when it fails. Then every program of
# $needs must be there.
apt_install() {
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			sudo="sudo"
		else
			echo "$me: need root (or sudo) to install: $*" >&2
			exit 1
		fi
	fi
	log=$(mktemp)
	# --no-install-recommends keeps packages such as tgt from pulling in
	# extras; a package may try to start its service, which fails
	# harmlessly without systemd.
	if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"; } >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		echo "$me: apt-get install $* failed" >&2
		exit 1
	fi
	rm -f "$log"
	for pair in $needs; do
		prog=${pair%%:*}
		if ! have "$prog"; then
			echo "$me: $prog still missing after installing $*" >&2
			exit 1
		fi
	done
}
