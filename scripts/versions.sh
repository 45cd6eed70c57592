# Pinned tool versions and where they are installed (sourced by the other scripts).
GARAGE_VERSION=2.5.0
PAILFS_TOOLS="${PAILFS_TOOLS:-$HOME/.local/share/pailfs-tools}"
GARAGE_BIN="$PAILFS_TOOLS/garage-$GARAGE_VERSION/bin/garage"
