"""Per-run isolation of research code (DESIGN §5), the same in warm and cold
mode; the worker asks for it (job["isolate"]) when the sandbox is on. In
cold mode the harness calls enter() as root, after it has read its job and
before any user code runs. In warm mode the zygote forks each pre-forked
child straight into a PID namespace of its own (pidns_for_next_child), so
the child is the run's PID 1 with no process between it and the zygote;
it sets up its namespaces ahead of time (become_init) and does
make_home() when its run comes.

enter() turns the calling process C into a run of its own:

1. new mount, PID and IPC namespaces (unshare);
2. one tmpfs of ``diskBytes``, owned by the run's uid, holds the run's
   working directory (/home inside the run), /tmp and /dev/shm, so
   everything the run can write (files, /tmp, shared memory) is counted
   against one cap and lives in memory that is freed when the run ends.
   It exists only in the run's mount namespace: outside it, the run's
   folder under the work dir is an empty, root-only mount point, so no
   other run can read or write the run's files, even knowing a path;
3. fork: the child G is PID 1 of the new PID namespace and gets a fresh
   /proc, so it sees and can signal only its own processes
   (``os.kill(-1, 9)`` reaches nothing else). When G ends, the kernel kills
   every process left in the namespace, whatever it did (setsid, double
   fork, ignoring signals): nothing a run started outlives it. C stays
   behind as G's parent, waits for it and exits the same way, so the worker
   sees one process end as before; killing C kills G (parent-death signal,
   armed again after the uid changes).

After the harness has set rlimits and dropped to the run's uid,
lock_down() installs a seccomp filter: no user or other namespaces, no
mounts, no ptrace, no kernel keyring, bpf, perf or io_uring, and no
pushing input into a terminal (TIOCSTI, TIOCLINUX).
"""

import ctypes
import os
import platform
import select
import signal
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
# Every namespace flag (cgroup, uts, ipc, user, pid, net, mount).
CLONE_NS_FLAGS = 0x7E020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 38, 22
SECCOMP_MODE_FILTER = 2

# HOME is the run's working directory inside its namespaces.
HOME = "/home"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

# The alive pipe: C holds the write end, G the read end; when C is gone,
# G sees the pipe hang up (used to close the race around the parent-death
# signal, which the kernel clears when the uid changes).
_alive_fd = None


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(src, target, fstype, flags, data=None):
    _check(_libc.mount(src and src.encode(), target.encode(), fstype and fstype.encode(), flags,
                       data and data.encode()), f"mount {target}")


# Set once this process is a run of its own (split and make_home done).
entered = False


def enter(job):
    """Isolate this process as described above (cold mode: the harness
    calls it itself). Returns in G (the run); in C it never returns.
    job["isolate"] has uid, gid and diskBytes."""
    global entered
    if entered:  # warm mode: the zygote's child already did it
        return
    run_dir = os.getcwd()
    split()
    iso = job["isolate"]
    make_home(run_dir, int(iso["uid"]), int(iso["gid"]), int(iso["diskBytes"]))


def split():
    """Steps 1 and 3: new namespaces, then fork. Returns in G, PID 1 of the
    new PID namespace with its own /proc; in C it never returns. Needs
    nothing of the run, so the warm zygote does it ahead of time."""
    global _alive_fd
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # G: PID 1 of the run's namespace
        os.close(alive_w)
        _alive_fd = alive_r
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if _parent_gone():
            os._exit(1)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return
    os.close(alive_r)
    _wait_and_mirror(pid)


def pidns_for_next_child(own_pidns):
    """In the warm zygote, before a fork: make the next child PID 1 of a
    new PID namespace of its own (setns back to the zygote's own namespace
    first, since unshare(CLONE_NEWPID) works once per namespace). The child
    then needs no waiting parent of its own: it is the run's init, reaped by
    the zygote, and one fork per run is all it costs."""
    _check(_libc.setns(own_pidns, CLONE_NEWPID), "setns")
    _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")


def reset_pidns(own_pidns):
    """In the zygote, after the fork: its later children are its own again."""
    _check(_libc.setns(own_pidns, CLONE_NEWPID), "setns")


def become_init(alive_fd):
    """In a warm child that is PID 1 of its own PID namespace: its own
    mount and IPC namespaces and /proc. alive_fd is the read end of a pipe
    the zygote holds open (the parent-death check; getppid() is 0 here)."""
    global _alive_fd
    _alive_fd = alive_fd
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if _parent_gone():
        os._exit(1)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def make_home(run_dir, uid, gid, disk):
    """Step 2, in G (still root): the run's tmpfs, its home, /tmp and
    /dev/shm; then cd to the home."""
    global entered
    # One tmpfs holds the run's home, /tmp and /dev/shm (binds take their
    # sources relative to the tmpfs's root, the cwd). The home is /home,
    # which also hides the host's; the run's folder under the work dir,
    # possibly under /tmp itself, only anchors the tmpfs.
    _mount("tmpfs", run_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk},mode=0700,uid={uid},gid={gid}")
    os.chdir(run_dir)
    for sub in ("home", "tmp", "shm"):
        os.mkdir(sub, 0o700)
        os.chown(sub, uid, gid)
    home = HOME if os.path.isdir(HOME) else run_dir
    _mount("home", home, None, MS_BIND)
    _mount("tmp", "/tmp", None, MS_BIND)
    _mount("shm", "/dev/shm", None, MS_BIND)
    os.chdir(home)
    os.environ["HOME"] = home
    os.environ["TMPDIR"] = "/tmp"
    entered = True


def _parent_gone():
    return bool(_alive_fd is not None and select.select([_alive_fd], [], [], 0)[0])


def rearm_parent_death():
    """Set the parent-death signal again (a uid change clears it) and exit
    at once if C already died in between."""
    if _alive_fd is None:
        return
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if _parent_gone():
        os._exit(1)


def _wait_and_mirror(pid):
    """In C: wait for G and end the same way (exit code or signal)."""
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


# ------------------------------------------------------------------ seccomp

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Syscalls user code never gets (EPERM), by architecture.
_DENIED = {
    "x86_64": dict(unshare=272, setns=308, mount=165, umount2=166, pivot_root=155, chroot=161, ptrace=101,
                   process_vm_readv=310, process_vm_writev=311, kexec_load=246, kexec_file_load=320,
                   init_module=175, finit_module=313, delete_module=176, bpf=321, perf_event_open=298,
                   userfaultfd=323, keyctl=250, add_key=248, request_key=249, open_by_handle_at=304,
                   name_to_handle_at=303, swapon=167, swapoff=168, reboot=169, syslog=103, acct=163,
                   quotactl=179, iopl=172, ioperm=173, open_tree=428, move_mount=429, fsopen=430,
                   fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, io_uring_setup=425,
                   io_uring_enter=426, io_uring_register=427),
    "aarch64": dict(unshare=97, setns=268, mount=40, umount2=39, pivot_root=41, chroot=51, ptrace=117,
                    process_vm_readv=270, process_vm_writev=271, kexec_load=104, kexec_file_load=294,
                    init_module=105, finit_module=273, delete_module=106, bpf=280, perf_event_open=241,
                    userfaultfd=282, keyctl=219, add_key=217, request_key=218, open_by_handle_at=265,
                    name_to_handle_at=264, swapon=224, swapoff=225, reboot=142, syslog=116, acct=89,
                    quotactl=60, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
                    fspick=433, mount_setattr=442, io_uring_setup=425, io_uring_enter=426,
                    io_uring_register=427),
}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435
_IOCTL = {"x86_64": 16, "aarch64": 29}
# ioctls that push input into a terminal (a controlling one, should the
# worker have it: bubblewrap runs without --new-session, see
# pkg/executor/isolation.go): refused, as Flatpak does.
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS = 1, 38


def _program(arch):
    """The BPF program as (code, jt, jf, k) tuples. A jump names a label
    (a string in the list marks where it is)."""
    prog = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, _AUDIT_ARCH[arch]), (_RET, 0, 0, _KILL), (_LD_ABS, 0, 0, 0)]
    if arch == "x86_64":  # the x32 ABI's numbers
        prog.append((_JGE, "eperm", 0, 0x40000000))
    for nr in _DENIED[arch].values():
        prog.append((_JEQ, "eperm", 0, nr))
    # clone3 passes its flags in memory the filter cannot read: make libc
    # fall back to clone, whose flags it can.
    prog.append((_JEQ, "enosys", 0, _CLONE3))
    prog.append((_JEQ, "clone", 0, _CLONE[arch]))
    prog.append((_JEQ, "ioctl", "allow", _IOCTL[arch]))
    prog += ["clone", (_LD_ABS, 0, 0, 16),  # low 32 bits of args[0]: the flags
             (_JSET, "eperm", "allow", CLONE_NS_FLAGS)]
    prog += ["ioctl", (_LD_ABS, 0, 0, 24),  # low 32 bits of args[1]: the request
             (_JEQ, "eperm", 0, TIOCSTI), (_JEQ, "eperm", "allow", TIOCLINUX)]
    prog += ["allow", (_RET, 0, 0, _ALLOW),
             "eperm", (_RET, 0, 0, _ERRNO | _EPERM),
             "enosys", (_RET, 0, 0, _ERRNO | _ENOSYS)]
    labels, out = {}, []
    for ins in prog:
        if isinstance(ins, str):
            labels[ins] = len(out)
        else:
            out.append(ins)
    for i, (code, jt, jf, k) in enumerate(out):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out[i] = (code, jt, jf, k)
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _compile_filter():
    """The filter as the kernel takes it (a sock_fprog and its program),
    or None on an architecture it has no numbers for."""
    arch = platform.machine()
    if arch not in _AUDIT_ARCH:
        return None
    prog = _program(arch)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in prog))
    return _SockFprog(len(prog), ctypes.addressof(buf)), buf


# Built once, at import (in the warm zygote: before any child is forked),
# so a run's lock-down is two prctl calls.
_FILTER = _compile_filter()


def lock_down():
    """Install the seccomp filter for this process and all it starts."""
    if _FILTER is None:
        raise OSError(f"no seccomp filter for architecture {platform.machine()}")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_FILTER[0]), 0, 0), "seccomp")


def set_parent_death():
    """Ask for SIGKILL when the parent process dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def probe():
    """The worker's start-up check, run inside bubblewrap: set up a run as
    enter() does, lock it down, and exit 0 only if a user namespace is then
    refused. Any failure is printed and exits non-zero."""
    import tempfile
    os.chdir(tempfile.mkdtemp())
    enter({"isolate": {"uid": 65534, "gid": 65534, "diskBytes": 1 << 20}})
    if not os.listdir("/tmp") == os.listdir(".") == []:
        print("isolation probe: the run's home or /tmp is not empty")
        os._exit(3)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    rearm_parent_death()
    lock_down()
    if os.getpid() != 1:
        print("isolation probe: not PID 1 of a new PID namespace")
        os._exit(3)
    if _libc.unshare(0x10000000) == 0:
        print("isolation probe: a user namespace was still allowed after the seccomp filter")
        os._exit(3)
    if not refused_tiocsti():
        print("isolation probe: TIOCSTI was not refused after the seccomp filter")
        os._exit(3)
    os._exit(0)


def refused_tiocsti():
    """Whether this process is refused TIOCSTI (EPERM from the filter; a
    descriptor that is no terminal would say ENOTTY)."""
    import fcntl
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, TIOCSTI, b"x")
    except OSError as e:
        return e.errno == 1
    finally:
        os.close(fd)
    return False
