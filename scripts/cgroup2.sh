#!/usr/bin/env bash
# Move the idle v1 cpu (and cpuset) controllers of this hybrid host to the cgroup2 mount and back.
#
#   scripts/cgroup2.sh on [CTRL...]   umount /sys/fs/cgroup/CTRL, enable CTRL in the unified root
#   scripts/cgroup2.sh off            disable them on cgroup2 again and remount the v1 hierarchies
#   scripts/cgroup2.sh status         where each of cpu, cpuset is bound now (exit 0: all on v1, 3: switched),
#                                     and whether a switch is possible on this boot (what `on` or `probe` found)
#   scripts/cgroup2.sh probe          try the switch and restore v1 at once (exit 0: possible, 4: refused)
#
# CTRL is cpu and/or cpuset (default: cpu cpuset). memory is never moved: the machine's supervisor
# has a group in the v1 memory hierarchy. `on` refuses (exit 2, nothing changed) when not root, when
# a v1 hierarchy it would unmount has child groups, or when a controller shares its v1 mount with
# another one. An empty libpod_parent left by podman (no process in it or in its empty sub-groups
# such as conmon) is removed first, and the message says so.
# A v1 hierarchy cannot be unmounted while any process has a file open in it (a running flowctl
# sampler keeps cpu.stat open): `on` retries for FLOWCTL_CGROUP2_BUSY_WAIT_S (10) seconds, then
# fails (exit 1) naming those processes. Some kernels refuse the umount with no holder at all (seen:
# 6.18.44, every v1 hierarchy "busy"), or do not bind the freed controller to cgroup2: then `on`
# exits 4 with one line "cgroup2.sh: refused by kernel K (...)": the machine cannot switch, nothing
# of ours is at fault. If `on` fails half-way it restores what it changed. Every `on` records its
# outcome for this boot in $STATE (read by `status`); once a refusal is recorded, `on` repeats it at
# once (exit 4, same line) for the rest of the boot, before any other check.
# `off` works from any state (it is also what recovers a machine left switched by a crash): it
# disables the controllers in every cgroup2 group's cgroup.subtree_control (deepest first, removing
# no group), then remounts each v1 hierarchy at /sys/fs/cgroup/CTRL, retrying for a while because
# the kernel frees a controller a little after its last cgroup2 group goes.
#
# Only a development convention, not enforced here: run it under `flock /run/flowctl-machine.lock`.
set -euo pipefail
trap 'echo "cgroup2.sh: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

CG=/sys/fs/cgroup
UNIFIED=${FLOWCTL_CGROUP2_UNIFIED:-$CG/unified}
MOVABLE=(cpu cpuset)
REMOUNT_TRIES=${FLOWCTL_CGROUP2_REMOUNT_TRIES:-200}   # x 0.05 s
BUSY_WAIT_S=${FLOWCTL_CGROUP2_BUSY_WAIT_S:-10}        # how long `on` waits for open files in a v1 hierarchy to close
STATE=${FLOWCTL_CGROUP2_STATE:-/run/flowctl-cgroup2.state}   # the outcome of the last `on` on this boot
REFUSED=4                                               # exit code: the kernel refuses the switch

die() { echo "cgroup2.sh: $*" >&2; exit 2; }

# The mount entry (mountinfo line) of the v1 hierarchy carrying controller $1, or nothing.
v1_mount_line() {
    awk -v c="$1" '{
        for (i = 7; $i != "-"; i++) ;
        if ($(i+1) != "cgroup") next
        n = split($(i+3), o, ",")
        for (j = 1; j <= n; j++) if (o[j] == c) { print; exit }
    }' /proc/self/mountinfo
}

v1_mount_point() { v1_mount_line "$1" | awk '{print $5}'; }

# The controllers in the super options of the v1 mount of $1 (e.g. "cpu" or "cpu cpuacct").
v1_mount_controllers() {
    v1_mount_line "$1" | awk '{
        for (i = 7; $i != "-"; i++) ;
        n = split($(i+3), o, ",")
        for (j = 1; j <= n; j++) if (o[j] != "rw" && o[j] != "ro" && o[j] !~ /=/ && o[j] != "noprefix" && o[j] != "clone_children") printf "%s ", o[j]
    }'
}

on_v2() { grep -qw -- "$1" "$UNIFIED/cgroup.controllers" 2>/dev/null; }

valid_ctrl() {
    local c
    for c in "${MOVABLE[@]}"; do [[ $1 == "$c" ]] && return 0; done
    return 1
}

status() {
    local c mp switched=0
    [[ -f $UNIFIED/cgroup.controllers ]] || die "no cgroup2 mounted at $UNIFIED"
    for c in "${MOVABLE[@]}"; do
        mp=$(v1_mount_point "$c")
        if [[ -n $mp ]]; then
            echo "$c: v1 at $mp ($(find "$mp" -mindepth 1 -type d | wc -l) child groups)"
        elif on_v2 "$c"; then
            switched=1
            local sub=no
            grep -qw -- "$c" "$UNIFIED/cgroup.subtree_control" && sub=yes
            echo "$c: v2 at $UNIFIED (enabled for its children: $sub)"
        else
            switched=1
            echo "$c: neither a v1 mount nor on $UNIFIED (being freed by the kernel?)"
        fi
    done
    echo "unified: $UNIFIED controllers: $(cat "$UNIFIED/cgroup.controllers")"
    switch_verdict
    return $((switched ? 3 : 0))
}

# Remount the v1 hierarchy of $1 at $CG/$1, retrying while the kernel still holds the controller.
remount_v1() {
    local c=$1 i err=""
    mkdir -p "$CG/$c"
    for ((i = 0; i < REMOUNT_TRIES; i++)); do
        if err=$(mount -t cgroup -o "$c" cgroup "$CG/$c" 2>&1); then
            return 0
        fi
        sleep 0.05
    done
    echo "cgroup2.sh: cannot remount v1 $c at $CG/$c: $err" >&2
    return 1
}

# How many cgroups the v1 hierarchy of controller $1 still counts (/proc/cgroups; 1 = only its root).
# A removed group is counted until the kernel frees it, a moment after rmdir.
v1_num_cgroups() { awk -v c="$1" '$1 == c { print $3 }' /proc/cgroups; }

# Wait (up to 10 s) until the hierarchy of $1 counts only its root. Unmounting it while a just-removed
# group is still being freed leaves the hierarchy alive with no mount, holding the controller: the
# kernel only destroys a hierarchy at umount when its root has no children, dying ones included.
wait_no_dying_groups() {
    local i
    for ((i = 0; i < 200; i++)); do
        [[ $(v1_num_cgroups "$1") == 1 ]] && return 0
        sleep 0.05
    done
    return 1
}

# umount $1, retrying while it is busy (another process has a file open in it) for BUSY_WAIT_S.
umount_when_free() {
    local deadline=$((SECONDS + BUSY_WAIT_S)) err
    while ! err=$(umount "$1" 2>&1); do
        [[ $err == *busy* ]] && ((SECONDS < deadline)) || { echo "cgroup2.sh: $err" >&2; return 1; }
        sleep 0.2
    done
}

# The processes with an open file, working directory, root or memory map under $1.
holders() {
    local p
    for p in /proc/[0-9]*; do
        if ls -l "$p/fd" 2>/dev/null | grep -q -- "-> $1/" || [[ $(readlink "$p/cwd" 2>/dev/null) == "$1"* ]] \
            || [[ $(readlink "$p/root" 2>/dev/null) == "$1"* ]] || grep -q -- " $1/" "$p/maps" 2>/dev/null; then
            echo "  pid ${p#/proc/}: $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null | head -c 160)"
        fi
    done
}

boot_id() { cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown; }

# Record the outcome of a switch attempt on this boot: $1 = possible|refused, $2 = why.
record() { printf 'boot=%s\nkernel=%s\nresult=%s\nreason=%s\nwhen=%s\n' "$(boot_id)" "$(uname -r)" "$1" "$2" \
    "$(date -u +%FT%TZ)" > "$STATE" 2>/dev/null || true; }

# Exit $REFUSED with the one line the test fixture reads: the kernel, not a holder of ours, refuses.
refuse() {
    local why="refused by kernel $(uname -r) ($1)"
    record refused "$why"
    echo "cgroup2.sh: $why" >&2
    exit "$REFUSED"
}

# The refusal `on` recorded on this boot, without its "refused by kernel " prefix, or nothing.
recorded_refusal() {
    [[ -r $STATE ]] || return 0
    [[ $(sed -n 's/^boot=//p' "$STATE") == "$(boot_id)" && $(sed -n 's/^result=//p' "$STATE") == refused ]] || return 0
    local reason when
    reason=$(sed -n 's/^reason=//p' "$STATE"); when=$(sed -n 's/^when=//p' "$STATE")
    [[ $reason == "refused by kernel "* ]] || return 0
    echo "${reason#refused by kernel } [recorded at $when on this boot]"
}

# What is known on this boot about switching: the outcome `on` recorded, or that it was not tried.
switch_verdict() {
    local boot="" result="" reason="" when=""
    if [[ -r $STATE ]]; then
        boot=$(sed -n 's/^boot=//p' "$STATE"); result=$(sed -n 's/^result=//p' "$STATE")
        reason=$(sed -n 's/^reason=//p' "$STATE"); when=$(sed -n 's/^when=//p' "$STATE")
    fi
    if [[ $boot != "$(boot_id)" || -z $result ]]; then
        echo "switch on this boot: not tried yet (\`$0 probe\` tries it and restores v1)"
    elif [[ $result == refused ]]; then
        echo "switch on this boot: impossible, $reason (at $when)"
    else
        echo "switch on this boot: possible (done at $when)"
    fi
}

# Disable controller $1 in every cgroup2 group's subtree_control, deepest first (no group is removed).
disable_on_v2() {
    local c=$1 f
    while IFS= read -r f; do
        if grep -qw -- "$c" "$f" 2>/dev/null; then
            echo "-$c" > "$f" || { echo "cgroup2.sh: cannot disable $c in $f" >&2; return 1; }
        fi
    done < <(find "$UNIFIED" -name cgroup.subtree_control -printf '%d %p\n' | sort -rn | cut -d' ' -f2-)
}

off() {
    local c rc=0
    [[ $(id -u) -eq 0 ]] || die "must be root (switching cgroup controllers needs CAP_SYS_ADMIN)"
    [[ -f $UNIFIED/cgroup.controllers ]] || die "no cgroup2 mounted at $UNIFIED"
    for c in "${MOVABLE[@]}"; do
        [[ -n $(v1_mount_point "$c") ]] && continue
        if on_v2 "$c"; then
            disable_on_v2 "$c" || rc=1
        fi
        if remount_v1 "$c"; then
            echo "cgroup2.sh: $c back on v1 at $CG/$c"
        else
            rc=1
        fi
    done
    return $rc
}

on() {
    local c mp ctrls children d
    local -a wanted=("$@")
    ((${#wanted[@]})) || wanted=("${MOVABLE[@]}")
    [[ $(id -u) -eq 0 ]] || die "must be root (switching cgroup controllers needs CAP_SYS_ADMIN)"
    [[ -f $UNIFIED/cgroup.controllers ]] || die "no cgroup2 mounted at $UNIFIED"
    # The kernel's refusal does not change within a boot: once recorded, say it again without retrying
    # (and whatever else is going on in the v1 hierarchy, such as another job's groups, does not matter).
    local recorded
    recorded=$(recorded_refusal)
    if [[ -n $recorded ]]; then
        echo "cgroup2.sh: refused by kernel $recorded" >&2
        exit "$REFUSED"
    fi
    # Check everything before changing anything.
    for c in "${wanted[@]}"; do
        valid_ctrl "$c" || die "only ${MOVABLE[*]} can be moved (not '$c'; memory stays on v1 here)"
        mp=$(v1_mount_point "$c")
        if [[ -z $mp ]]; then
            on_v2 "$c" && continue
            die "$c is neither mounted as v1 nor on $UNIFIED"
        fi
        ctrls=$(v1_mount_controllers "$c")
        [[ $ctrls == "$c " ]] || die "$c is co-mounted with other controllers at $mp ($ctrls): refusing to move them all"
        d=$mp/libpod_parent
        if [[ -d $d ]] && [[ -z $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null) ]]; then
            # no process anywhere under it: rmdir deepest first (rmdir itself refuses a non-empty group)
            find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d $d ]] || echo "cgroup2.sh: removed the empty $d (left by podman; no process in it or below)"
        fi
        children=$(find "$mp" -mindepth 1 -type d | head -5)
        [[ -z $children ]] || die "the v1 $c hierarchy at $mp has child groups, so $c cannot be moved (nothing changed):
$children"
        wait_no_dying_groups "$c" || die "the v1 $c hierarchy still counts $(v1_num_cgroups "$c") cgroups in /proc/cgroups \
(removed groups not yet freed by the kernel), so $c cannot be moved yet (nothing changed)"
    done
    local -a moved=()
    for c in "${wanted[@]}"; do
        on_v2 "$c" && { grep -qw -- "$c" "$UNIFIED/cgroup.subtree_control" || echo "+$c" > "$UNIFIED/cgroup.subtree_control"; continue; }
        mp=$(v1_mount_point "$c")
        if ! umount_when_free "$mp"; then
            local held
            held=$(holders "$mp")
            ((${#moved[@]})) && { echo "cgroup2.sh: restoring ${moved[*]}" >&2; off >&2 || true; }
            [[ -n $held ]] || refuse "umount $mp busy, no holder"
            echo "cgroup2.sh: $mp stays busy: a process keeps a file in the v1 $c hierarchy open (a flowctl sampler?):" >&2
            echo "$held" >&2
            exit 1
        fi
        moved+=("$c")
        local i ok=0
        for ((i = 0; i < REMOUNT_TRIES; i++)); do
            if echo "+$c" > "$UNIFIED/cgroup.subtree_control" 2>/dev/null; then ok=1; break; fi
            sleep 0.05
        done
        if ((!ok)); then
            echo "cgroup2.sh: the kernel did not bind $c to $UNIFIED (cgroup.controllers: $(cat "$UNIFIED/cgroup.controllers")); restoring" >&2
            off >&2 || true
            refuse "$c did not bind to cgroup2"
        fi
        echo "cgroup2.sh: $c moved to v2 at $UNIFIED"
    done
    record possible "switched ${wanted[*]}"
}

# Try the switch and put v1 back at once: exit 0 when the kernel allows it, $REFUSED when it refuses.
probe() {
    local rc=0
    ( on "$@" ) || rc=$?
    off || exit 1
    exit $rc
}

cmd=${1:-status}
shift || true
case $cmd in
    on) on "$@" ;;
    off) off ;;
    status) status ;;
    probe) probe "$@" ;;
    *) echo "usage: $0 on [cpu] [cpuset] | off | status | probe [cpu] [cpuset]" >&2; exit 2 ;;
esac
