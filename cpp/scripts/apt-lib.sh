# Shared by install-deps.sh and install-cross-deps.sh (sourced, not run): which Debian packages
# are missing, and how to run apt-get as root.

# Prints the packages among "$@" that dpkg does not list as installed, each after a space
# (nothing when all are).
missing_packages() {
    missing=""
    for package in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
        case "$status" in
            *"install ok installed"*) ;;
            *) missing="$missing $package" ;;
        esac
    done
    printf '%s' "$missing"
}

# Sets $run to what runs a command as root: nothing for root, `sudo -n` where sudo needs no
# password. Fails where neither is possible.
root_runner() {
    if [ "$(id -u)" -eq 0 ]; then
        run=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        run="sudo -n"
    else
        return 1
    fi
}
